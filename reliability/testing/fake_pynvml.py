"""A faithful stand-in for the `pynvml` module (nvidia-ml-py 12/13), driven by test state.

`FakePynvml` has the real module's function names, signatures and return shapes, and
reuses its constants, error classes and ctypes structures, so code written against
`pynvml` runs unchanged: `except pynvml.NVMLError_GpuIsLost` catches what the fake
raises, `nvmlDeviceGetMemoryInfo(h).used` is a real `c_nvmlMemory_t` field, device
handles are `c_nvmlDevice_t` pointers and event data a `c_nvmlEventData_t`. A function
the fake does not model raises AttributeError, as an older pynvml that lacks it would.

What the functions answer comes from `gpus`, a list of `FakeGpu` that a test changes:
add or remove a GPU, mark one `lost` (NVML_ERROR_GPU_IS_LOST from its handle and every
call) or `missing` (not enumerated), make a function `unsupported` on one GPU, raise an
XID with `raise_xid`, fail `nvmlInit` with `init_error`, name functions the driver
lacks in `absent` (NVML_ERROR_FUNCTION_NOT_FOUND, as pynvml 13 answers on an older
driver), or make a function `hang` until `release()`.

Behaviour follows NVML's documentation: every call before `nvmlInit` fails with
NVML_ERROR_UNINITIALIZED; `nvmlEventSetWait` hands out queued events one at a time and
raises NVML_ERROR_TIMEOUT when none is queued; events reach only the sets a device was
registered on before the event happened.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

# Bus numbers of the eight GPUs of an HGX H100 board, for believable PCI ids.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
_MIB = 1024 * 1024


@dataclass
class FakeGpu:
    """One GPU as NVML reports it, in NVML's own units (percent, bytes, mW, mJ, MHz)."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:18:00.0"
    utilization_gpu: int = 0
    utilization_memory: int = 0
    memory_used: int = 0
    memory_total: int = 81559 * _MIB
    temperature: int = 41
    slowdown_temperature: int = 87
    power_usage_mw: int = 69_850
    power_limit_mw: int = 700_000
    energy_mj: int = 1_000_000
    sm_clock_mhz: int = 345
    clock_event_reasons: int = 0x1
    # (NVML_MEMORY_ERROR_TYPE_*, NVML_VOLATILE_ECC | NVML_AGGREGATE_ECC) -> count
    ecc_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    # (correctable, uncorrectable, pending, failure), as nvmlDeviceGetRemappedRows returns
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)
    retired_pages_pending: int = 0
    pcie_replay: int = 0
    lost: bool = False
    missing: bool = False
    # names of nvml* functions that answer NVML_ERROR_NOT_SUPPORTED for this GPU
    unsupported: set[str] = field(default_factory=set)


def default_gpu(slot: int) -> FakeGpu:
    """An idle H100 with a stable identity per slot."""
    bus = _HGX_BUSES[slot % len(_HGX_BUSES)] + 0x100 * (slot // len(_HGX_BUSES))
    return FakeGpu(
        uuid=f"GPU-{slot:08x}-0000-4000-8000-{slot:012x}",
        pci_bus_id=f"00000000:{bus:02X}:00.0",
    )


_DEVICE_BASE = 0x10000
_SET_BASE = 0x90000


def _address(pointer: Any) -> int:
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


def _error(code: int) -> _real.NVMLError:
    # NVMLError(code) returns the matching subclass, e.g. NVMLError_GpuIsLost.
    return _real.NVMLError(code)


class FakePynvml:
    """Module-like fake of `pynvml`; see the module docstring for what a test can change."""

    def __init__(self, gpus: int = 0) -> None:
        self.gpus: list[FakeGpu] = [default_gpu(slot) for slot in range(gpus)]
        self.init_error: int | None = None
        self.absent: set[str] = set()
        self.driver_version = "590.48.01"
        self.calls: list[str] = []
        self._initialized = 0
        self._lock = threading.Lock()
        self._hanging: set[str] = set()
        self._unblocked = threading.Event()
        self._unblocked.set()
        # set address -> (registered slots, queued (slot, xid) events)
        self._sets: dict[int, tuple[set[int], deque[tuple[int, int]]]] = {}

    def __getattr__(self, name: str) -> Any:
        # Constants, error classes and structures come from the real module; its
        # functions do not, so an unmodelled call fails loudly instead of loading NVML.
        value = getattr(_real, name)
        if callable(value) and not isinstance(value, type):
            raise AttributeError(f"fake pynvml does not model {name}")
        return value

    # --- what tests drive ---------------------------------------------------------------
    def add_gpu(self, **values: Any) -> FakeGpu:
        gpu = default_gpu(len(self.gpus))
        for key, value in values.items():
            setattr(gpu, key, value)
        self.gpus.append(gpu)
        return gpu

    def raise_xid(self, slot: int, code: int) -> None:
        """The driver reports XID `code` on the GPU at `slot` (its position in `gpus`)."""
        with self._lock:
            for registered, queue in self._sets.values():
                if slot in registered:
                    queue.append((slot, code))

    def hang(self, function: str) -> None:
        """Calls of `function` block (as NVML does on a sick GPU) until `release()`."""
        self._hanging.add(function)
        self._unblocked.clear()

    def release(self) -> None:
        self._hanging.clear()
        self._unblocked.set()

    # --- internals -----------------------------------------------------------------------
    def _enter(self, function: str) -> None:
        self.calls.append(function)
        if function in self.absent:
            raise _error(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        if function in self._hanging:
            self._unblocked.wait()
        if not self._initialized and function != "nvmlInit":
            raise _error(_real.NVML_ERROR_UNINITIALIZED)

    def _enumerated(self) -> list[int]:
        return [slot for slot, gpu in enumerate(self.gpus) if not gpu.missing]

    def _handle(self, slot: int) -> Any:
        return ctypes.cast(ctypes.c_void_p(_DEVICE_BASE + 0x100 * slot), _real.c_nvmlDevice_t)

    def _slot(self, handle: Any) -> int | None:
        offset = _address(handle) - _DEVICE_BASE
        slot = offset // 0x100
        return slot if offset >= 0 and slot < len(self.gpus) else None

    def _gpu(self, function: str, handle: Any) -> FakeGpu:
        self._enter(function)
        slot = self._slot(handle)
        if slot is None:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[slot]
        if gpu.lost:
            raise _error(_real.NVML_ERROR_GPU_IS_LOST)
        if function in gpu.unsupported:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    # --- library lifecycle ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise _error(self.init_error)
        self._initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    # --- devices -------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self._enumerated())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        enumerated = self._enumerated()
        if not 0 <= index < len(enumerated):
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[enumerated[index]].lost:
            raise _error(_real.NVML_ERROR_GPU_IS_LOST)
        return self._handle(enumerated[index])

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu = self._gpu("nvmlDeviceGetPciInfo", handle)
        info = _real.nvmlPciInfo_t()
        domain, bus, rest = gpu.pci_bus_id.split(":")
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id[4:].encode()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest[:2], 16)
        return info

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return _real.c_nvmlUtilization_t(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        free = gpu.memory_total - gpu.memory_used
        return _real.c_nvmlMemory_t(total=gpu.memory_total, free=free, used=gpu.memory_used)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetTemperatureV(
        self, handle: Any, sensor: int, version: int = _real.nvmlTemperature_v1
    ) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperatureV", handle)
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperatureThreshold", handle)
        if threshold != _real.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.slowdown_temperature

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_usage_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        gpu = self._gpu("nvmlDeviceGetClockInfo", handle)
        if type != _real.NVML_CLOCK_SM:
            raise _error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        return gpu.ecc_errors.get((errorType, counterType), 0)

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        return self._gpu("nvmlDeviceGetRemappedRows", device).remapped_rows

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int:
        return self._gpu("nvmlDeviceGetRetiredPagesPendingStatus", device).retired_pages_pending

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        return self._gpu("nvmlDeviceGetPcieReplayCounter", handle).pcie_replay

    # --- events --------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> Any:
        self._enter("nvmlEventSetCreate")
        with self._lock:
            address = _SET_BASE + 0x100 * len(self._sets)
            self._sets[address] = (set(), deque())
        return ctypes.cast(ctypes.c_void_p(address), _real.c_nvmlEventSet_t)

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        self._gpu("nvmlDeviceRegisterEvents", handle)
        slot = self._slot(handle)
        assert slot is not None  # _gpu has checked the handle
        with self._lock:
            registered, _ = self._sets[_address(eventSet)]
            # Only XID events are modelled; registering for them is what matters.
            if eventTypes & _real.nvmlEventTypeXidCriticalError:
                registered.add(slot)

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:
        self._enter("nvmlEventSetWait")
        with self._lock:
            _, queue = self._sets[_address(eventSet)]
            event = queue.popleft() if queue else None
        if event is None:
            time.sleep(timeoutms / 1000)
            raise _error(_real.NVML_ERROR_TIMEOUT)
        slot, code = event
        data = _real.c_nvmlEventData_t()
        data.device = self._handle(slot)
        data.eventType = _real.nvmlEventTypeXidCriticalError
        data.eventData = code
        return data

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._enter("nvmlEventSetFree")
        with self._lock:
            self._sets.pop(_address(eventSet), None)
