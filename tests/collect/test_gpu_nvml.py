"""The local GPU collector through NVML, specified against the faithful pynvml fake."""

from __future__ import annotations

import ctypes.util
import time
from collections.abc import Sequence

import pytest

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect.base import CollectError, HistogramValue, Sample
from reliability.collect.gpu import format_table, main
from reliability.collect.gpu_nvml import NvmlGpuCollector
from reliability.testing.fake_pynvml import FakePynvml

NODE = "gpu-1"
NOW = 1_790_000_000.0


def collector(fake: FakePynvml, expected: int, timeout: float = 2.0) -> NvmlGpuCollector:
    return NvmlGpuCollector(
        node=NODE, expected_gpus=expected, nvml=fake, timeout=timeout, clock=lambda: NOW
    )


def values(samples: Sequence[Sample], metric: Metric) -> dict[tuple, float | HistogramValue]:
    """The metric's values keyed by their labels after `node`."""
    return {s.labels[1:]: s.value for s in samples if s.metric is metric}


def of_gpu(samples, gpu: str) -> set[str]:
    return {s.metric.name for s in samples if "gpu" in s.metric.labels and s.labels[1] == gpu}


def test_reports_each_gpu_in_base_units():
    fake = FakePynvml(gpus=1)
    gpu = fake.gpus[0]
    gpu.utilization_gpu, gpu.utilization_memory = 72, 30
    gpu.memory_used, gpu.memory_total = 20 * 2**30, 80 * 2**30
    gpu.temperature, gpu.slowdown_temperature = 65, 87
    gpu.power_usage_mw, gpu.power_limit_mw = 150_000, 700_000
    gpu.energy_mj = 5_000_000
    gpu.sm_clock_mhz = 1980
    gpu.clock_event_reasons = 0x4 | 0x40  # sw power cap + hw thermal slowdown
    gpu.ecc_errors = {(0, 0): 3, (0, 1): 7, (1, 1): 1}
    gpu.remapped_rows = (2, 1, 1, 0)
    gpu.pcie_replay = 9

    samples = collector(fake, expected=1).collect(NODE)

    assert values(samples, catalog.GPU_UTILIZATION) == {("0",): 0.72}
    assert values(samples, catalog.GPU_MEMORY_UTILIZATION) == {("0",): 0.30}
    assert values(samples, catalog.GPU_MEMORY_USED) == {("0",): 20 * 2**30}
    assert values(samples, catalog.GPU_MEMORY_TOTAL) == {("0",): 80 * 2**30}
    assert values(samples, catalog.GPU_TEMPERATURE) == {("0",): 65}
    assert values(samples, catalog.GPU_SLOWDOWN_TEMPERATURE) == {("0",): 87}
    assert values(samples, catalog.GPU_POWER_DRAW) == {("0",): 150.0}
    assert values(samples, catalog.GPU_POWER_LIMIT) == {("0",): 700.0}
    assert values(samples, catalog.GPU_ENERGY) == {("0",): 5000.0}
    assert values(samples, catalog.GPU_SM_CLOCK) == {("0",): 1.98e9}
    reasons = values(samples, catalog.GPU_CLOCK_EVENT)
    assert {r[1] for r, v in reasons.items() if v == 1} == {"sw_power_cap", "hw_thermal_slowdown"}
    assert len(reasons) == 9
    assert values(samples, catalog.GPU_ECC_ERRORS) == {
        ("0", "corrected", "volatile"): 3,
        ("0", "corrected", "aggregate"): 7,
        ("0", "uncorrected", "volatile"): 0,
        ("0", "uncorrected", "aggregate"): 1,
    }
    assert values(samples, catalog.GPU_REMAPPED_ROWS) == {
        ("0", "correctable"): 2,
        ("0", "uncorrectable"): 1,
    }
    assert values(samples, catalog.GPU_REMAP_PENDING) == {("0",): 1}
    assert values(samples, catalog.GPU_REMAP_FAILURE) == {("0",): 0}
    assert values(samples, catalog.GPU_RETIRED_PAGES_PENDING) == {("0",): 0}
    assert values(samples, catalog.GPU_PCIE_REPLAY) == {("0",): 9}
    assert values(samples, catalog.GPU_INFO) == {
        ("0", gpu.uuid, "NVIDIA H100 80GB HBM3", "00000000:18:00.0"): 1
    }
    assert values(samples, catalog.GPU_LOST) == {("0",): 0}
    assert values(samples, catalog.NODE_GPUS_EXPECTED) == {(): 1}
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 1}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 0}
    for s in samples:
        assert len(s.labels) == len(s.metric.labels)
        assert s.labels[0] == NODE


def test_unsupported_features_are_left_out_not_zero():
    fake = FakePynvml(gpus=1)
    fake.gpus[0].unsupported = {
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetTemperatureThreshold",
    }

    samples = collector(fake, expected=1).collect(NODE)

    names = of_gpu(samples, "0")
    for metric in (
        catalog.GPU_ENERGY,
        catalog.GPU_ECC_ERRORS,
        catalog.GPU_RETIRED_PAGES_PENDING,
        catalog.GPU_SLOWDOWN_TEMPERATURE,
    ):
        assert metric.name not in names
    assert catalog.GPU_POWER_DRAW.name in names
    assert catalog.GPU_REMAPPED_ROWS.name in names


def test_an_older_driver_is_read_through_the_older_functions():
    fake = FakePynvml(gpus=1)
    fake.gpus[0].clock_event_reasons = 0x20
    fake.absent = {"nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetTemperatureV"}

    samples = collector(fake, expected=1).collect(NODE)

    assert values(samples, catalog.GPU_CLOCK_EVENT)[("0", "sw_thermal_slowdown")] == 1
    assert values(samples, catalog.GPU_TEMPERATURE) == {("0",): 41}
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in fake.calls


def test_a_lost_gpu_reports_only_that_it_is_lost():
    fake = FakePynvml(gpus=2)
    fake.gpus[1].lost = True

    samples = collector(fake, expected=2).collect(NODE)

    assert values(samples, catalog.GPU_LOST) == {("0",): 0, ("1",): 1}
    assert of_gpu(samples, "1") == {catalog.GPU_LOST.name}
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 1}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 1}


def test_a_gpu_lost_since_the_last_read_drops_its_old_values():
    fake = FakePynvml(gpus=2)
    gpus = collector(fake, expected=2)
    assert catalog.GPU_POWER_DRAW.name in of_gpu(gpus.collect(NODE), "1")

    fake.gpus[1].lost = True

    assert of_gpu(gpus.collect(NODE), "1") == {catalog.GPU_LOST.name}


def test_fewer_gpus_than_expected_counts_the_missing_as_lost():
    fake = FakePynvml(gpus=8)
    fake.gpus[3].missing = True

    samples = collector(fake, expected=8).collect(NODE)

    assert values(samples, catalog.NODE_GPUS_EXPECTED) == {(): 8}
    assert values(samples, catalog.NODE_GPUS_VISIBLE) == {(): 7}
    assert values(samples, catalog.NODE_GPUS_LOST) == {(): 1}
    assert len(values(samples, catalog.GPU_INFO)) == 7


def test_an_xid_is_counted_once_with_its_action_and_time():
    fake = FakePynvml(gpus=2)
    gpus = collector(fake, expected=2)
    assert values(gpus.collect(NODE), catalog.GPU_XID_ERRORS) == {}

    fake.raise_xid(1, 79)
    first = gpus.collect(NODE)
    again = gpus.collect(NODE)

    expected = {("1", "79", "reboot_node"): 1}
    assert values(first, catalog.GPU_XID_ERRORS) == expected
    assert values(again, catalog.GPU_XID_ERRORS) == expected
    assert values(again, catalog.GPU_XID_LAST) == {("1", "79"): NOW}

    fake.raise_xid(1, 79)
    fake.raise_xid(0, 31)
    later = values(gpus.collect(NODE), catalog.GPU_XID_ERRORS)
    assert later == {("1", "79", "reboot_node"): 2, ("0", "31", "restart_app"): 1}


def test_a_hung_call_times_out_and_is_not_stacked():
    fake = FakePynvml(gpus=1)
    gpus = collector(fake, expected=1, timeout=0.2)
    fake.hang("nvmlDeviceGetPowerUsage")
    try:
        started = time.monotonic()
        with pytest.raises(CollectError) as first:
            gpus.collect(NODE)
        assert first.value.reason == "timeout"
        assert time.monotonic() - started < 1.0
        assert values(first.value.samples, catalog.NODE_GPUS_EXPECTED) == {(): 1}

        with pytest.raises(CollectError) as second:
            gpus.collect(NODE)
        assert second.value.reason == "timeout"
        assert "still hung" in str(second.value)
        assert fake.calls.count("nvmlDeviceGetCount") == 1
    finally:
        fake.release()

    deadline = time.monotonic() + 5
    while True:
        try:
            samples = gpus.collect(NODE)
            break
        except CollectError:
            assert time.monotonic() < deadline, "the released read never finished"
            time.sleep(0.05)
    assert values(samples, catalog.GPU_POWER_DRAW) == {("0",): 69.85}


def test_no_driver_is_a_driver_error_and_is_retried():
    fake = FakePynvml(gpus=1)
    fake.init_error = fake.NVML_ERROR_DRIVER_NOT_LOADED
    gpus = collector(fake, expected=1)

    with pytest.raises(CollectError) as error:
        gpus.collect(NODE)
    assert error.value.reason == "driver"
    assert "Driver Not Loaded" in str(error.value)

    fake.init_error = None
    assert values(gpus.collect(NODE), catalog.NODE_GPUS_VISIBLE) == {(): 1}


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver"
)
def test_the_real_pynvml_without_a_driver_is_a_driver_error(capsys):
    gpus = NvmlGpuCollector(node=NODE, expected_gpus=1)
    with pytest.raises(CollectError) as error:
        gpus.collect(NODE)
    assert error.value.reason == "driver"

    assert main(["--node", NODE]) == 1
    assert "collect failed (driver)" in capsys.readouterr().err


def test_the_table_shows_every_sample():
    samples = collector(FakePynvml(gpus=1), expected=1).collect(NODE)
    table = format_table(samples).splitlines()
    assert table[0].split() == ["metric", "labels", "value"]
    assert len(table) == len(samples) + 1
    assert any(line.startswith("gpu_power_draw_watts") and "69.85" in line for line in table)
