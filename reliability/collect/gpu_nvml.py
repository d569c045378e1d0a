"""Local GPUs through NVML (`pynvml`, from nvidia-ml-py), every call under a watchdog.

`NvmlGpuCollector(node=..., expected_gpus=..., nvml=..., timeout=...)` is a `Collector`
named "gpu" whose only target is its node. Each `collect` runs one whole read of every
GPU in a worker thread and waits at most `timeout` seconds: NVML can block for minutes
on a sick GPU, and a hung driver call cannot be interrupted, only abandoned. While an
abandoned read is still stuck, later collects fail at once with reason "timeout" rather
than stack a second thread behind the same driver lock.

Per GPU it reports utilisation (ratios), memory (bytes), temperature and slowdown
threshold (Celsius), power draw and enforced limit (W), total energy (J), SM clock (Hz),
clock event reasons (0/1 per reason), ECC totals, remapped rows, retired pages pending,
PCIe replays and identity. A value the GPU does not support (NVML_ERROR_NOT_SUPPORTED, or
a function the driver or pynvml lacks) is left out, never reported as 0. A GPU whose
handle or any call answers NVML_ERROR_GPU_IS_LOST reports `gpu_lost 1` and nothing else.
XIDs come from an NVML event set registered for nvmlEventTypeXidCriticalError on every
GPU and drained without blocking on each read.

Run `python -m reliability.collect.gpu` on a GPU machine to print what it reads.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect import base
from reliability.collect.base import CollectError, Sample
from reliability.collect.gpu_common import (
    UNKNOWN_GPU,
    Unopened,
    XidLedger,
    clock_event_samples,
    node_count_samples,
    sample,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A storm of XIDs must not keep one read draining forever; the rest waits for the next.
_MAX_EVENTS_PER_READ = 1000
_ECC = (
    ("corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED"),
    ("uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED"),
)
_ECC_SCOPES = (("volatile", "NVML_VOLATILE_ECC"), ("aggregate", "NVML_AGGREGATE_ECC"))


class _GpuLost(Exception):
    """A call on this GPU answered NVML_ERROR_GPU_IS_LOST."""


def _handle_key(handle: Any) -> int:
    """A stable key for a device handle: the pointer value NVML handed out."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or 0
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class _Calls:
    """NVML calls for one read, mapping errors to what the collector reports."""

    def __init__(self, nvml: Any, node: str, warned: set[tuple[str, str, str]]) -> None:
        self.nvml = nvml
        self.node = node
        self._warned = warned

    def get(self, gpu: str, function: str, *args: Any) -> Any:
        """The call's result, or None where the GPU does not support it."""
        return self.first(gpu, (function, args))

    def first(self, gpu: str, *calls: tuple[str, tuple[Any, ...]]) -> Any:
        """The result of the first call this pynvml and driver have (newest API first)."""
        nvml = self.nvml
        for function, args in calls:
            fn = getattr(nvml, function, None)
            if fn is None:  # an older pynvml without this function
                continue
            try:
                return fn(*args)
            except nvml.NVMLError_FunctionNotFound:  # an older driver without it
                continue
            except nvml.NVMLError_NotSupported:
                return None
            except nvml.NVMLError_GpuIsLost as error:
                raise _GpuLost from error
            except nvml.NVMLError as error:
                # Anything else (no permission, unknown error) loses this one value, not
                # the node; say so once per GPU, call and error so the log stays readable.
                key = (gpu, function, str(error))
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("%s GPU %s: %s failed: %s", self.node, gpu, function, error)
                return None
        return None


def _milli(value: int | None) -> float | None:
    """mW, mJ -> W, J. Dividing (not multiplying by 1e-3) keeps 69850 mW exactly 69.85 W."""
    return None if value is None else value / 1000


def _gpu_samples(calls: _Calls, gpu: str, handle: Any) -> list[Sample]:
    """Everything one GPU reports; raises _GpuLost if it is lost part-way."""
    nvml, node = calls.nvml, calls.node
    out: list[Sample] = []

    def add(metric: Metric, value: float | None, *extra: str) -> None:
        if value is not None:
            out.append(sample(metric, (node, gpu, *extra), value))

    uuid = calls.get(gpu, "nvmlDeviceGetUUID", handle)
    model = calls.get(gpu, "nvmlDeviceGetName", handle)
    pci = calls.get(gpu, "nvmlDeviceGetPciInfo", handle)
    info = (node, gpu, uuid or "", model or "", pci.busId if pci is not None else "")
    out.append(sample(catalog.GPU_INFO, info, 1))

    rates = calls.get(gpu, "nvmlDeviceGetUtilizationRates", handle)
    if rates is not None:
        add(catalog.GPU_UTILIZATION, rates.gpu / 100)
        add(catalog.GPU_MEMORY_UTILIZATION, rates.memory / 100)
    memory = calls.get(gpu, "nvmlDeviceGetMemoryInfo", handle)
    if memory is not None:
        add(catalog.GPU_MEMORY_USED, memory.used)
        add(catalog.GPU_MEMORY_TOTAL, memory.total)
    sensor = nvml.NVML_TEMPERATURE_GPU
    temperature = calls.first(
        gpu,
        ("nvmlDeviceGetTemperatureV", (handle, sensor)),
        ("nvmlDeviceGetTemperature", (handle, sensor)),  # deprecated in nvidia-ml-py 13
    )
    add(catalog.GPU_TEMPERATURE, temperature)
    slowdown = nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    add(
        catalog.GPU_SLOWDOWN_TEMPERATURE,
        calls.get(gpu, "nvmlDeviceGetTemperatureThreshold", handle, slowdown),
    )
    power = calls.get(gpu, "nvmlDeviceGetPowerUsage", handle)  # mW
    add(catalog.GPU_POWER_DRAW, _milli(power))
    limit = calls.get(gpu, "nvmlDeviceGetEnforcedPowerLimit", handle)  # mW
    add(catalog.GPU_POWER_LIMIT, _milli(limit))
    energy = calls.get(gpu, "nvmlDeviceGetTotalEnergyConsumption", handle)  # mJ
    add(catalog.GPU_ENERGY, _milli(energy))
    sm_clock = calls.get(gpu, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM)  # MHz
    add(catalog.GPU_SM_CLOCK, None if sm_clock is None else sm_clock * 1_000_000)
    reasons = calls.first(
        gpu,
        ("nvmlDeviceGetCurrentClocksEventReasons", (handle,)),
        ("nvmlDeviceGetCurrentClocksThrottleReasons", (handle,)),  # before driver 535
    )
    if reasons is not None:
        out.extend(clock_event_samples(node, gpu, int(reasons)))
    for kind, error_type in _ECC:
        for scope, counter in _ECC_SCOPES:
            count = calls.get(
                gpu,
                "nvmlDeviceGetTotalEccErrors",
                handle,
                getattr(nvml, error_type),
                getattr(nvml, counter),
            )
            add(catalog.GPU_ECC_ERRORS, count, kind, scope)
    rows = calls.get(gpu, "nvmlDeviceGetRemappedRows", handle)
    if rows is not None:
        correctable, uncorrectable, pending, failure = rows
        add(catalog.GPU_REMAPPED_ROWS, correctable, "correctable")
        add(catalog.GPU_REMAPPED_ROWS, uncorrectable, "uncorrectable")
        add(catalog.GPU_REMAP_PENDING, 1 if pending else 0)
        add(catalog.GPU_REMAP_FAILURE, 1 if failure else 0)
    retired = calls.get(gpu, "nvmlDeviceGetRetiredPagesPendingStatus", handle)
    if retired is not None:
        add(catalog.GPU_RETIRED_PAGES_PENDING, 1 if retired == nvml.NVML_FEATURE_ENABLED else 0)
    add(catalog.GPU_PCIE_REPLAY, calls.get(gpu, "nvmlDeviceGetPcieReplayCounter", handle))
    return out


class NvmlGpuCollector:
    """The local node's GPUs through NVML; see the module docstring for the contract.

    `nvml` is the `pynvml` module or a stand-in with its interface (default: `import
    pynvml` on first use, so the daemon starts on machines without it). `clock` stamps
    XIDs, whose NVML events carry no time of their own.
    """

    name = base.GPU

    def __init__(
        self,
        *,
        node: str,
        expected_gpus: int,
        nvml: Any | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.expected_gpus = expected_gpus
        self.timeout = timeout
        self._nvml = nvml
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: Future[Any] | None = None
        self._inflight_since = 0.0
        # Touched only by the one read (or shutdown) in flight.
        self._initialized = False
        self._event_set: Any = None
        self._registered: set[int] = set()
        self._gpu_of_handle: dict[int, str] = {}
        self._xids = XidLedger()
        self._warned: set[tuple[str, str, str]] = set()
        self._unopened = Unopened(node)

    def targets(self) -> Sequence[str]:
        return [self.node]

    def collect(self, target: str) -> Sequence[Sample]:
        """This node's GPU samples; CollectError "driver" or "timeout" when NVML fails."""
        if target != self.node:
            raise ValueError(f"NvmlGpuCollector of {self.node!r} asked for {target!r}")
        return self._guarded(self._read)

    def close(self) -> None:
        """Free the event set and shut NVML down, unless a read is still stuck in it."""
        try:
            self._guarded(self._shutdown)
        except CollectError as error:
            log.warning("%s: NVML shutdown skipped: %s", self.node, error)

    # --- the watchdog --------------------------------------------------------------------
    def _guarded(self, work: Callable[[], T]) -> T:
        expected = [sample(catalog.NODE_GPUS_EXPECTED, (self.node,), self.expected_gpus)]
        with self._lock:
            if self._inflight is not None and not self._inflight.done():
                age = time.monotonic() - self._inflight_since
                raise CollectError(
                    "timeout",
                    f"{self.node}: an NVML call started {age:.1f}s ago is still hung; "
                    "not starting another",
                    samples=expected,
                )
            future: Future[T] = Future()
            self._inflight, self._inflight_since = future, time.monotonic()
            # A daemon thread: a call stuck in the driver must not hold up process exit.
            threading.Thread(
                target=_run, args=(future, work), name=f"nvml-{self.node}", daemon=True
            ).start()
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            if future.done():
                raise
            raise CollectError(
                "timeout",
                f"{self.node}: NVML did not answer within {self.timeout:g}s",
                samples=expected,
            ) from None

    # --- one read, in the worker thread --------------------------------------------------
    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as error:
                raise CollectError("driver", f"{self.node}: pynvml is not installed") from error
        return self._nvml

    def _ensure_initialized(self, nvml: Any) -> None:
        if self._initialized:
            return
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise CollectError("driver", f"{self.node}: NVML init failed: {error}") from error
        self._initialized = True
        self._registered.clear()
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as error:
            self._event_set = None
            log.warning("%s: no NVML event set, XIDs will not be seen: %s", self.node, error)

    def _read(self) -> list[Sample]:
        nvml = self._module()
        self._ensure_initialized(nvml)
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as error:
            # The driver went away under us (unloaded, version mismatch): start over.
            self._shutdown()
            raise CollectError(
                "driver", f"{self.node}: NVML device count failed: {error}"
            ) from error
        calls = _Calls(nvml, self.node, self._warned)
        samples: list[Sample] = []
        handles: list[tuple[str, Any]] = []
        lost = 0
        for index in range(count):
            gpu = str(index)
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError_GpuIsLost:
                lost += 1
                samples.append(sample(catalog.GPU_LOST, (self.node, gpu), 1))
                continue
            except nvml.NVMLError as error:
                # Not lost, but not usable either: it counts as missing.
                self._unopened.failed(gpu, f"no handle: {error}")
                continue
            handles.append((gpu, handle))
            self._gpu_of_handle[_handle_key(handle)] = gpu
        self._unopened.opened(gpu for gpu, _ in handles)
        self._register_events(nvml, handles)
        self._drain_events(nvml)
        visible = 0
        for gpu, handle in handles:
            try:
                gpu_samples = _gpu_samples(calls, gpu, handle)
            except _GpuLost:
                lost += 1
                samples.append(sample(catalog.GPU_LOST, (self.node, gpu), 1))
                continue
            visible += 1
            samples.append(sample(catalog.GPU_LOST, (self.node, gpu), 0))
            samples.extend(gpu_samples)
        samples.extend(
            node_count_samples(self.node, expected=self.expected_gpus, visible=visible, lost=lost)
        )
        samples.extend(self._xids.samples(self.node))
        return samples

    def _register_events(self, nvml: Any, handles: list[tuple[str, Any]]) -> None:
        if self._event_set is None:
            return
        for gpu, handle in handles:
            key = _handle_key(handle)
            if key in self._registered:
                continue
            try:
                nvml.nvmlDeviceRegisterEvents(
                    handle, nvml.nvmlEventTypeXidCriticalError, self._event_set
                )
            except nvml.NVMLError_GpuIsLost:
                continue  # the per-GPU read reports it; try again if it comes back
            except nvml.NVMLError as error:
                log.warning("%s GPU %s: XID events unavailable: %s", self.node, gpu, error)
            self._registered.add(key)

    def _drain_events(self, nvml: Any) -> None:
        if self._event_set is None:
            return
        for _ in range(_MAX_EVENTS_PER_READ):
            try:
                data = nvml.nvmlEventSetWait(self._event_set, 0)
            except nvml.NVMLError_Timeout:
                return  # nothing more queued
            except nvml.NVMLError as error:
                log.warning("%s: reading NVML events failed: %s", self.node, error)
                return
            if data.eventType == nvml.nvmlEventTypeXidCriticalError:
                gpu = self._gpu_of_handle.get(_handle_key(data.device), UNKNOWN_GPU)
                self._xids.record(gpu, int(data.eventData), self._clock())

    def _shutdown(self) -> None:
        if not self._initialized:
            return
        nvml = self._module()
        self._initialized = False
        self._registered.clear()
        try:
            if self._event_set is not None:
                nvml.nvmlEventSetFree(self._event_set)
            nvml.nvmlShutdown()
        except nvml.NVMLError as error:
            log.warning("%s: NVML shutdown: %s", self.node, error)
        self._event_set = None


def _run(future: Future[T], work: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = work()
    except BaseException as error:  # handed to the waiting collect, which re-raises it
        future.set_exception(error)
    else:
        future.set_result(result)
