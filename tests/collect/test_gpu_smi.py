"""Remote GPUs through nvidia-smi and dmesg over SSH, specified with a scripted runner.

The outputs below are written as the real tools print them (driver 590 nvidia-smi CSV
with `--format=csv,noheader,nounits`, util-linux `dmesg --time-format iso`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect.base import CollectError, Sample
from reliability.collect.gpu_common import pci_key
from reliability.collect.gpu_smi import (
    FIELDS,
    LEGACY_FIELDS,
    SMI_COMMAND,
    SmiGpuCollector,
)
from reliability.collect.kernel_log import MARK

NODE = "gpu-7"
MIB = 1024 * 1024

H100_ROWS = (
    "0, GPU-6d3a8f0e-1c2b-4d5e-8f90-a1b2c3d4e5f6, NVIDIA H100 80GB HBM3, 00000000:18:00.0, "
    "100, 11, 19818, 81559, 59, 28, 629.45, 700.00, 1980, 0x0000000000000000, 0, 3, 0, 1, [N/A], "
    "0, 0, No, No\n"
    "1, GPU-0f9e8d7c-6b5a-4938-2716-a5b4c3d2e1f0, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, "
    "0, 0, 0, 81559, 41, 46, 69.85, 700.00, 345, 0x0000000000000001, 0, 0, 0, 0, [N/A], "
    "2, 1, Yes, No\n"
)
# Driver 525: no T.Limit margin, the reasons under their old name.
OLD_DRIVER_ROWS = (
    "0, GPU-6d3a8f0e-1c2b-4d5e-8f90-a1b2c3d4e5f6, NVIDIA H100 80GB HBM3, 00000000:18:00.0, "
    "100, 11, 19818, 81559, 59, 629.45, 700.00, 1980, 0x0000000000000000, 0, 3, 0, 1, [N/A], "
    "0, 0, No, No\n"
    "1, GPU-0f9e8d7c-6b5a-4938-2716-a5b4c3d2e1f0, NVIDIA H100 80GB HBM3, 00000000:2A:00.0, "
    "0, 0, 0, 81559, 41, 69.85, 700.00, 345, 0x0000000000000001, 0, 0, 0, 0, [N/A], "
    "2, 1, Yes, No\n"
)
LOST_LINE = (
    "Unable to determine the device handle for GPU1: 0000:2A:00.0: GPU is lost.  "
    "Reboot the system to recover this GPU"
)
DRIVER_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n\n"
)
BOOTED = 1_790_000_000  # btime of /proc/stat
BOOT = f"{MARK} boot 6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5 {BOOTED}\n"
OK = f"{MARK} rc 0\n"
# What the dmesg read prints (util-linux dmesg, seconds since boot), between its markers.
KERNEL_LINES = (
    "[    0.000000] Linux version 6.8.0-49-generic (buildd@lcy02-amd64-103)\n"
    "[    9.512345] nvidia-nvlink: Nvlink Core is being initialized\n"
    "[  380.123456] NVRM: Xid (PCI:0000:2a:00): 79, pid='<unknown>', "
    "name=<unknown>, GPU has fallen off the bus.\n"
    "[  380.200000] NVRM: GPU 0000:2a:00.0: GPU has fallen off the bus.\n"
    "[  461.000001] NVRM: Xid (PCI:0000:18:00): 13, pid=4121, name=python3, "
    "Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address\n"
)
KERNEL_LOG = BOOT + KERNEL_LINES + OK


@dataclass
class Result:
    exit_status: int
    stdout: str = ""
    stderr: str = ""


@dataclass
class ScriptedRunner:
    """Answers each command by its program name; records what it was asked to run."""

    answers: dict[str, Result | Exception]
    commands: list[str] = field(default_factory=list)

    def run(self, command: str, *, timeout: float) -> Result:
        assert timeout > 0
        self.commands.append(command)
        answer = self.answers["dmesg" if "{ dmesg " in command else command.split()[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer


def gpus(runner: ScriptedRunner, expected: int) -> SmiGpuCollector:
    return SmiGpuCollector(
        {NODE: (runner, expected)}, timeout=5.0, kernel_log_commands={NODE: "dmesg"}
    )


def runner(smi: Result, dmesg: Result | Exception | None = None) -> ScriptedRunner:
    return ScriptedRunner({"nvidia-smi": smi, "dmesg": dmesg or Result(0, BOOT + OK)})


def values(samples, metric: Metric) -> dict[tuple, float]:
    return {s.labels[1:]: s.value for s in samples if s.metric is metric}


def of_gpu(samples: list[Sample], gpu: str) -> set[str]:
    return {s.metric.name for s in samples if "gpu" in s.metric.labels and s.labels[1] == gpu}


def test_the_command_asks_for_real_fields_without_units():
    assert (
        "nvidia-smi --query-gpu=" + ",".join(FIELDS) + " --format=csv,noheader,nounits"
    ) == SMI_COMMAND
    # Every field is one the rig's nvidia-smi (from a driver 590 capture) accepts.
    gpu_fields = pytest.importorskip("reliability.testing.gpu_fields")
    assert [f for f in (*FIELDS, *LEGACY_FIELDS) if gpu_fields.canonical(f) is None] == []


def test_h100_rows_become_samples_in_base_units():
    samples = gpus(runner(Result(0, H100_ROWS)), expected=2).collect(NODE)

    assert values(samples, catalog.GPU_UTILIZATION) == {("0",): 1.0, ("1",): 0.0}
    assert values(samples, catalog.GPU_MEMORY_UTILIZATION)[("0",)] == 0.11
    assert values(samples, catalog.GPU_MEMORY_USED)[("0",)] == 19818 * MIB
    assert values(samples, catalog.GPU_MEMORY_TOTAL)[("0",)] == 81559 * MIB
    assert values(samples, catalog.GPU_TEMPERATURE) == {("0",): 59, ("1",): 41}
    assert values(samples, catalog.GPU_POWER_DRAW) == {("0",): 629.45, ("1",): 69.85}
    assert values(samples, catalog.GPU_POWER_LIMIT)[("0",)] == 700.0
    assert values(samples, catalog.GPU_SM_CLOCK)[("0",)] == 1.98e9
    reasons = values(samples, catalog.GPU_CLOCK_EVENT)
    assert reasons[("1", "gpu_idle")] == 1
    assert sum(v for (gpu, _), v in reasons.items() if gpu == "0") == 0
    assert values(samples, catalog.GPU_ECC_ERRORS) == {
        ("0", "corrected", "volatile"): 0,
        ("0", "corrected", "aggregate"): 3,
        ("0", "uncorrected", "volatile"): 0,
        ("0", "uncorrected", "aggregate"): 1,
        ("1", "corrected", "volatile"): 0,
        ("1", "corrected", "aggregate"): 0,
        ("1", "uncorrected", "volatile"): 0,
        ("1", "uncorrected", "aggregate"): 0,
    }
    assert values(samples, catalog.GPU_REMAPPED_ROWS)[("1", "correctable")] == 2
    assert values(samples, catalog.GPU_REMAP_PENDING) == {("0",): 0, ("1",): 1}
    assert values(samples, catalog.GPU_REMAP_FAILURE) == {("0",): 0, ("1",): 0}
    # H100 remaps rows and retires no pages: nvidia-smi prints [N/A].
    assert values(samples, catalog.GPU_RETIRED_PAGES_PENDING) == {}
    uuid = "GPU-6d3a8f0e-1c2b-4d5e-8f90-a1b2c3d4e5f6"
    info = ("0", uuid, "NVIDIA H100 80GB HBM3", "00000000:18:00.0")
    assert values(samples, catalog.GPU_INFO)[info] == 1
    assert values(samples, catalog.GPU_LOST) == {("0",): 0, ("1",): 0}
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 2}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 0}
    for s in samples:
        assert len(s.labels) == len(s.metric.labels)


def test_values_a_gpu_does_not_have_are_left_out():
    # A GeForce card: no ECC, no page retirement or row remapping, no power reading, no
    # T.Limit margin.
    row = (
        "0, GPU-1a2b3c4d-0000-1111-2222-333344445555, NVIDIA GeForce RTX 2080 SUPER, "
        "00000000:01:00.0, 3, 1, 512, 8192, 38, [N/A], [Not Supported], 250.00, 300, "
        "0x0000000000000001, [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A], [N/A]\n"
    )
    samples = gpus(runner(Result(0, row)), expected=1).collect(NODE)

    names = of_gpu(samples, "0")
    for metric in (
        catalog.GPU_POWER_DRAW,
        catalog.GPU_ECC_ERRORS,
        catalog.GPU_REMAPPED_ROWS,
        catalog.GPU_REMAP_PENDING,
        catalog.GPU_RETIRED_PAGES_PENDING,
        catalog.GPU_SLOWDOWN_TEMPERATURE,
    ):
        assert metric.name not in names
    assert values(samples, catalog.GPU_POWER_LIMIT) == {("0",): 250.0}


@pytest.mark.parametrize(
    "line",
    [
        "Segmentation fault (core dumped)",
        "0, GPU-6d3a8f0e, NVIDIA H100 80GB HBM3, 00000000:18:00.0, 100",
        H100_ROWS.splitlines()[0].replace(", 629.45,", ", 629.45 W,"),
        H100_ROWS.splitlines()[0].replace(", No, No", ", Maybe, No"),
    ],
)
def test_an_unreadable_line_is_bad_output_naming_node_and_line(line):
    with pytest.raises(CollectError) as error:
        gpus(runner(Result(0, line + "\n")), expected=1).collect(NODE)
    assert error.value.reason == "bad_output"
    assert NODE in str(error.value)
    assert line[:30] in str(error.value)


def test_a_lost_gpu_is_reported_lost_with_nothing_else():
    first_row = H100_ROWS.splitlines()[0]
    smi = Result(15, f"{first_row}\n{LOST_LINE}\n")

    samples = gpus(runner(smi), expected=2).collect(NODE)

    assert values(samples, catalog.GPU_LOST) == {("0",): 0, ("1",): 1}
    assert of_gpu(samples, "1") == {catalog.GPU_LOST.name}
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 1}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 1}


def test_an_older_drivers_lost_line_is_mapped_by_its_bus_id():
    scripted = runner(Result(0, H100_ROWS))
    collector = gpus(scripted, expected=2)
    collector.collect(NODE)
    old_style = (
        "Unable to determine the device handle for GPU 0000:2A:00.0: GPU is lost.  "
        "Reboot the system to recover this GPU"
    )
    scripted.answers["nvidia-smi"] = Result(15, H100_ROWS.splitlines()[0] + "\n" + old_style)

    samples = collector.collect(NODE)

    assert values(samples, catalog.GPU_LOST) == {("0",): 0, ("1",): 1}


def test_a_gpu_whose_handle_fails_otherwise_counts_as_missing():
    unknown = "Unable to determine the device handle for GPU1: 0000:2A:00.0: Unknown Error"
    smi = Result(255, H100_ROWS.splitlines()[0] + "\n" + unknown + "\n")

    samples = gpus(runner(smi), expected=2).collect(NODE)

    assert values(samples, catalog.GPU_LOST) == {("0",): 0}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 1}


def test_a_gpu_that_cannot_be_opened_is_logged_once_and_once_more_when_it_opens(caplog):
    caplog.set_level(logging.INFO, logger="reliability")
    unknown = "Unable to determine the device handle for GPU1: 0000:2A:00.0: Unknown Error"
    scripted = runner(Result(255, H100_ROWS.splitlines()[0] + "\n" + unknown + "\n"))
    collector = gpus(scripted, expected=2)

    for _ in range(3):
        collector.collect(NODE)
    scripted.answers["nvidia-smi"] = Result(0, H100_ROWS)
    for _ in range(2):
        collector.collect(NODE)

    assert [r.getMessage() for r in caplog.records] == [
        f"{NODE}: GPU 1 cannot be opened: Unknown Error",
        f"{NODE}: GPU 1 opens again",
    ]


def test_fewer_gpus_than_expected_counts_the_missing_as_lost():
    samples = gpus(runner(Result(0, H100_ROWS)), expected=8).collect(NODE)
    assert values(samples, catalog.NODE_GPUS_EXPECTED) == {(): 8}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 6}


def test_no_devices_means_every_expected_gpu_is_lost():
    samples = gpus(runner(Result(6, "No devices were found\n")), expected=8).collect(NODE)
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 0}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 8}


@pytest.mark.parametrize(
    "smi",
    [
        Result(9, DRIVER_FAILED),
        Result(18, "Failed to initialize NVML: Driver/library version mismatch\n"),
        Result(9, "", DRIVER_FAILED),
    ],
)
def test_a_driver_nvidia_smi_cannot_reach_is_a_driver_error(smi):
    with pytest.raises(CollectError) as error:
        gpus(runner(smi), expected=8).collect(NODE)
    assert error.value.reason == "driver"
    assert NODE in str(error.value)


def test_a_missing_nvidia_smi_is_a_failed_command():
    missing = Result(127, "", "sh: 1: nvidia-smi: not found\n")
    with pytest.raises(CollectError) as error:
        gpus(runner(missing), expected=8).collect(NODE)
    assert error.value.reason == "command_failed"
    assert "not found" in str(error.value)


def test_an_older_driver_is_asked_again_in_its_words_without_what_it_cannot_tell():
    class OldDriver(ScriptedRunner):
        def run(self, command: str, *, timeout: float) -> Result:
            for unknown in ("temperature.gpu.tlimit", "clocks_event_reasons.active"):
                if unknown in command:
                    self.commands.append(command)
                    return Result(2, f'Field "{unknown}" is not a valid field to query.\n\n')
            return super().run(command, timeout=timeout)

    old = OldDriver({"nvidia-smi": Result(0, OLD_DRIVER_ROWS), "dmesg": Result(0, "")})
    collector = gpus(old, expected=2)

    first = collector.collect(NODE)
    collector.collect(NODE)

    assert values(first, catalog.NODE_GPUS_VISIBLE) == {(): 2}
    assert values(first, catalog.GPU_TEMPERATURE) == {("0",): 59, ("1",): 41}
    assert values(first, catalog.GPU_SLOWDOWN_TEMPERATURE) == {}
    smi_commands = [c for c in old.commands if c.startswith("nvidia-smi")]
    assert len(smi_commands) == 4  # two rejected, then the driver's own words twice
    assert "clocks_throttle_reasons.active" in smi_commands[-1]
    assert "tlimit" not in smi_commands[-1]


def test_the_slowdown_temperature_is_the_temperature_plus_its_margin():
    samples = gpus(runner(Result(0, H100_ROWS)), expected=2).collect(NODE)
    assert values(samples, catalog.GPU_SLOWDOWN_TEMPERATURE) == {("0",): 87, ("1",): 87}


def test_xids_from_the_kernel_log_are_counted_once_by_gpu_index():
    scripted = runner(Result(0, H100_ROWS), Result(0, KERNEL_LOG))
    collector = gpus(scripted, expected=2)

    first = collector.collect(NODE)
    again = collector.collect(NODE)

    counts = {("1", "79", "reboot_node"): 1, ("0", "13", "restart_app"): 1}
    assert values(first, catalog.GPU_XID_ERRORS) == counts
    assert values(again, catalog.GPU_XID_ERRORS) == counts
    assert values(again, catalog.GPU_XID_LAST)[("1", "79")] == BOOTED + 380.123456

    newer = "[ 1300.000000] NVRM: Xid (PCI:0000:18:00): 13, pid=4300, name=python3, ...\n"
    scripted.answers["dmesg"] = Result(0, BOOT + KERNEL_LINES + newer + OK)
    later = values(collector.collect(NODE), catalog.GPU_XID_ERRORS)
    assert later == {("1", "79", "reboot_node"): 1, ("0", "13", "restart_app"): 2}


def test_an_xid_on_a_bus_no_gpu_answered_from_keeps_its_pci_id():
    line = "[  380.123456] NVRM: Xid (PCI:0000:9a:00): 48, pid=1, name=x, DBE\n"
    log = Result(0, BOOT + line + OK)
    samples = gpus(runner(Result(0, H100_ROWS), log), expected=2).collect(NODE)
    assert values(samples, catalog.GPU_XID_ERRORS) == {("0000:9a:00", "48", "reset_gpu"): 1}


def test_an_unreadable_kernel_log_costs_the_xids_not_the_gpus():
    refused = "dmesg: read kernel buffer failed: Operation not permitted\n"
    denied = Result(0, BOOT + refused + f"{MARK} rc 1\n")
    samples = gpus(runner(Result(0, H100_ROWS), denied), expected=2).collect(NODE)
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 2}
    assert values(samples, catalog.GPU_XID_ERRORS) == {}
    assert values(samples, catalog.NODE_KERNEL_LOG_READABLE) == {(): 0}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError("timed out"), "timeout"),
        (ConnectionRefusedError(111, "refused"), "unreachable"),
    ],
)
def test_a_runner_that_cannot_run_the_command_is_a_collect_error(error, reason):
    with pytest.raises(CollectError) as raised:
        gpus(ScriptedRunner({"nvidia-smi": error}), expected=1).collect(NODE)
    assert raised.value.reason == reason


class HostKeyRejected(Exception):
    """Shaped like reliability.ssh's errors: a short `reason` and the target in the text."""

    reason = "host_key"


def test_a_runner_error_with_a_reason_keeps_that_reason():
    rejected = HostKeyRejected(f"{NODE}: host key changed")
    with pytest.raises(CollectError) as raised:
        gpus(ScriptedRunner({"nvidia-smi": rejected}), expected=1).collect(NODE)
    assert raised.value.reason == "host_key"
    assert str(raised.value) == f"{NODE}: host key changed"


def test_pci_ids_of_nvidia_smi_and_the_kernel_agree():
    assert pci_key("00000000:3B:00.0") == pci_key("PCI:0000:3b:00") == (0, 0x3B, 0)
    assert pci_key("garbage") is None


class LocalRunner:
    """Runs commands in sh here, the rig's nvidia-smi, dmesg and journalctl stand-ins
    first on the PATH, for one node."""

    def __init__(self, environment: dict[str, str], bin_dir: Path) -> None:
        bin_dir.mkdir()
        for program in ("nvidia-smi", "dmesg", "journalctl"):
            module = program.replace("-", "_")
            shim = bin_dir / program
            python = shlex.quote(sys.executable)
            shim.write_text(f'#!/bin/sh\nexec {python} -m reliability.testing.{module} "$@"\n')
            shim.chmod(0o755)
        path = f"{bin_dir}:{environment.get('PATH', '/usr/bin:/bin')}"
        self.environment = {**environment, "PATH": path}

    def run(self, command: str, *, timeout: float) -> Result:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)


def test_the_rigs_nvidia_smi_and_dmesg_are_read_as_the_real_ones(tmp_path):
    rigstate = pytest.importorskip("reliability.testing.rigstate")
    rig = rigstate.RigState.create(tmp_path)
    rig.add_node(NODE, gpus=3)
    rig.set_gpu(
        NODE,
        0,
        {"utilization.gpu": 72, "temperature.gpu": 92, "clocks_event_reasons.hw_slowdown": True},
    )
    rig.set_gpu_status(NODE, 1, "lost")
    rig.set_gpu_status(NODE, 2, "missing")
    at = rig.read(NODE)["kernel"]["boot_time"] + 100.5
    rig.add_xid(NODE, 1, 79, at=at)
    environment = {
        **os.environ,
        "RELIABILITY_RIG_STATE": str(tmp_path),
        "RELIABILITY_RIG_NODE": NODE,
    }
    runner = LocalRunner(environment, tmp_path / "bin")
    collector = SmiGpuCollector({NODE: (runner, 3)}, timeout=30.0)

    samples = collector.collect(NODE)

    assert values(samples, catalog.GPU_UTILIZATION) == {("0",): 0.72}
    # Hot past its slowdown temperature: what gpu-temperature-slowdown compares.
    assert values(samples, catalog.GPU_TEMPERATURE) == {("0",): 92}
    assert values(samples, catalog.GPU_SLOWDOWN_TEMPERATURE) == {("0",): 87}
    assert values(samples, catalog.GPU_CLOCK_EVENT)[("0", "hw_slowdown")] == 1
    assert values(samples, catalog.GPU_LOST) == {("0",): 0, ("1",): 1}
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 1}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 2}
    assert values(samples, catalog.GPU_XID_ERRORS) == {("1", "79", "reboot_node"): 1}
    assert values(samples, catalog.GPU_XID_LAST) == {("1", "79"): pytest.approx(at)}
    assert values(samples, catalog.NODE_KERNEL_LOG_READABLE) == {(): 1}
    assert values(collector.collect(NODE), catalog.GPU_XID_ERRORS) == {
        ("1", "79", "reboot_node"): 1
    }
