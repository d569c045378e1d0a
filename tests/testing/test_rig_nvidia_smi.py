"""`nvidia-smi` stand-in: the real CSV shapes, errors and exit codes, from node state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reliability.testing import nvidia_smi
from reliability.testing.rigstate import RigState


@pytest.fixture
def rig(tmp_path: Path) -> RigState:
    state = RigState.create(tmp_path)
    state.add_node("gpu-1", gpus=4)
    return state


def smi(rig: RigState, *argv: str) -> tuple[str, int]:
    return nvidia_smi.render(rig.read("gpu-1"), argv)


def rows(out: str) -> list[list[str]]:
    return [line.split(", ") for line in out.splitlines()]


def test_csv_with_header_shows_units_in_brackets_and_on_values(rig: RigState) -> None:
    out, code = smi(
        rig,
        "--query-gpu=index,name,memory.used,temperature.gpu,power.draw,utilization.gpu",
        "--format=csv",
    )

    assert code == 0
    header, first = rows(out)[:2]
    assert header == [
        "index",
        "name",
        "memory.used [MiB]",
        "temperature.gpu",
        "power.draw [W]",
        "utilization.gpu [%]",
    ]
    assert first == ["0", "NVIDIA H100 80GB HBM3", "0 MiB", "41", "69.85 W", "0 %"]
    assert len(rows(out)) == 5


def test_noheader_nounits_values_follow_state(rig: RigState) -> None:
    rig.set_gpu(
        "gpu-1",
        2,
        {"temperature.gpu": 93, "utilization.gpu": 97, "power.draw": 640.5, "memory.used": 70000},
    )

    out, code = smi(
        rig,
        "--query-gpu=index,temperature.gpu,utilization.gpu,power.draw,memory.used,memory.free",
        "--format=csv,noheader,nounits",
    )

    assert code == 0
    assert rows(out)[2] == ["2", "93", "97", "640.50", "70000", str(81559 - 479 - 70000)]


def test_fields_are_echoed_as_asked_including_aliases(rig: RigState) -> None:
    out, _ = smi(
        rig,
        "--query-gpu=gpu_name,clocks.sm,clocks_throttle_reasons.active,pci.bus_id",
        "--format=csv",
    )

    assert rows(out)[0] == [
        "gpu_name",
        "clocks.sm [MHz]",
        "clocks_throttle_reasons.active",
        "pci.bus_id",
    ]
    assert rows(out)[1][1:] == ["345 MHz", "0x0000000000000001", "00000000:18:00.0"]


def test_clock_event_reasons_follow_the_active_bitmask(rig: RigState) -> None:
    rig.set_gpu(
        "gpu-1",
        1,
        {"clocks_event_reasons.hw_thermal_slowdown": True, "clocks_event_reasons.gpu_idle": False},
    )
    fields = ",".join(
        f"clocks_event_reasons.{name}" for name in ("active", "hw_thermal_slowdown", "sw_power_cap")
    )

    out, _ = smi(rig, f"--query-gpu={fields}", "--format=csv,noheader")

    assert rows(out)[1] == ["0x0000000000000040", "Active", "Not Active"]


def test_unsupported_values_print_na_and_ecc_counters_are_numbers(rig: RigState) -> None:
    rig.set_gpu(
        "gpu-1", 0, {"ecc.errors.uncorrected.volatile.total": 2, "remapped_rows.pending": True}
    )
    fields = ",".join(
        [
            "retired_pages.pending",
            "ecc.errors.uncorrected.volatile.total",
            "remapped_rows.pending",
            "fan.speed",
        ]
    )

    out, _ = smi(rig, f"--query-gpu={fields}", "--format=csv,noheader,nounits")

    assert rows(out)[0] == ["[N/A]", "2", "Yes", "[N/A]"]


def test_timestamp_driver_and_count_are_the_tools_own(rig: RigState) -> None:
    out, _ = smi(rig, "--query-gpu=timestamp,driver_version,count", "--format=csv,noheader")

    stamp, driver, count = rows(out)[0]
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", stamp)
    assert (driver, count) == ("590.48.01", "4")


def test_unknown_field_is_rejected_with_the_real_text_and_exit_2(rig: RigState) -> None:
    out, code = smi(rig, "--query-gpu=index,cuda_version", "--format=csv")

    assert code == 2
    assert out.splitlines()[0] == 'Field "cuda_version" is not a valid field to query.'


def test_missing_gpu_is_not_enumerated_and_later_gpus_renumber(rig: RigState) -> None:
    rig.set_gpu_status("gpu-1", 1, "missing")

    out, code = smi(rig, "--query-gpu=index,pci.bus_id,count", "--format=csv,noheader")

    assert code == 0
    assert rows(out) == [
        ["0", "00000000:18:00.0", "3"],
        ["1", "00000000:3A:00.0", "3"],
        ["2", "00000000:5D:00.0", "3"],
    ]


def test_lost_gpu_prints_the_device_handle_error_and_exits_15(rig: RigState) -> None:
    rig.set_gpu_status("gpu-1", 2, "lost")

    out, code = smi(rig, "--query-gpu=index,temperature.gpu", "--format=csv,noheader,nounits")

    assert code == 15
    assert out.splitlines() == [
        "0, 41",
        "1, 41",
        "Unable to determine the device handle for GPU2: 0000:3A:00.0: GPU is lost.  "
        "Reboot the system to recover this GPU",
        "3, 41",
    ]


def test_driver_failure_fails_every_call_with_exit_9(rig: RigState) -> None:
    rig.set_driver_failure("gpu-1")

    for argv in (["-L"], ["--query-gpu=index", "--format=csv"]):
        out, code = smi(rig, *argv)
        assert code == 9
        assert out.startswith(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        )


def test_list_and_id_selection(rig: RigState) -> None:
    uuid = rig.gpu("gpu-1", 3)["uuid"]

    listed, _ = smi(rig, "-L")
    chosen, _ = smi(rig, "-i", f"1,{uuid}", "--query-gpu=index", "--format=csv,noheader")
    nothing, code = smi(rig, "-i", "9", "--query-gpu=index", "--format=csv,noheader")

    assert listed.splitlines()[3] == f"GPU 3: NVIDIA H100 80GB HBM3 (UUID: {uuid})"
    assert chosen.split() == ["1", "3"]
    assert (nothing, code) == ("No devices were found\n", 6)


@pytest.mark.parametrize(
    "argv",
    [[], ["--query-gpu=index"], ["--format=csv"], ["-q"], ["--query-gpu=index", "--format=xml"]],
)
def test_unusable_arguments_exit_2(rig: RigState, argv: list[str]) -> None:
    assert smi(rig, *argv)[1] == 2


def test_settable_fields_are_checked(rig: RigState) -> None:
    with pytest.raises(ValueError, match="not a settable"):
        rig.set_gpu("gpu-1", 0, {"temperature.gpuu": 50})
