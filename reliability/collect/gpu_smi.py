"""GPUs of remote nodes: `nvidia-smi --query-gpu` and the kernel log, over SSH.

`SmiGpuCollector(nodes={name: (runner, expected_gpus)}, timeout=...)` is a `Collector`
named "gpu" whose targets are the node names. Each `collect(node)` runs `SMI_COMMAND`
and then reads what is new in the node's kernel log (kernel_log.py: journalctl, else
dmesg, or the node's `kernel_log_command`) through the node's runner, all within `timeout`.

It reports the catalogue's GPU series that nvidia-smi can query (see `FIELDS`); the
slowdown temperature is the GPU's temperature plus its margin to slowdown
(`temperature.gpu.tlimit`, drivers 535 and later; older ones are asked without it). nvidia-smi
has no query field for total energy or PCIe replays, so those come only from the NVML back
end. Values nvidia-smi prints as `[N/A]`, `[Not Supported]`
or another bracketed note are left out, never reported as 0. A line that is neither a
CSV row of the expected shape nor a message nvidia-smi is known to print is
CollectError("bad_output") naming the node and the line. "NVIDIA-SMI has failed" and
"Failed to initialize NVML" are CollectError("driver"). A GPU printed as "Unable to
determine the device handle for GPU...: GPU is lost" reports `gpu_lost 1`.

XIDs are the kernel's `NVRM: Xid (PCI:0000:3b:00): 79, ...` lines, mapped to the GPU
index through nvidia-smi's `pci.bus_id`. Only lines newer than the last read count; the
first read after start counts the newest lines the log still holds.
`node_kernel_log_readable` says whether the log could be read (0: permission denied,
restricted, not installed: XID detection is off on that node), logged once when it turns
off and once when it is back.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect import base
from reliability.collect.base import CollectError, Sample
from reliability.collect.gpu_common import (
    KernelXid,
    PciKey,
    Unopened,
    XidLedger,
    clock_event_samples,
    node_count_samples,
    pci_key,
    sample,
)
from reliability.collect.kernel_log import KernelLog, KernelRead, Source

log = logging.getLogger(__name__)


class FinishedCommand(Protocol):
    """A finished command (read-only, so `reliability.ssh.CommandResult` fits)."""

    @property
    def exit_status(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


class CommandRunner(Protocol):
    """Runs a shell command on one node (`reliability.ssh.NodeShell` over SSH).

    When the command cannot run or finish within `timeout` seconds it raises an error
    with a short `reason` label (as `reliability.ssh.SshError` does: unreachable,
    timeout, host_key, auth, ...), a TimeoutError or an OSError.
    """

    def run(self, command: str, *, timeout: float) -> FinishedCommand: ...


_REASONS_FIELD = "clocks_event_reasons.active"
# Drivers before 535 know the clock event reasons only by their old name.
_LEGACY_REASONS_FIELD = "clocks_throttle_reasons.active"
# Degrees left before the GPU slows itself down ("GPU T.Limit Temp"); older drivers lack it.
_MARGIN_FIELD = "temperature.gpu.tlimit"

# Queried per GPU, in this column order: --query-gpu fields of driver 590 (checked against
# its --help-query-gpu); drivers before 535 name only the reasons field differently.
FIELDS: tuple[str, ...] = (
    *("index", "uuid", "name", "pci.bus_id"),
    *("utilization.gpu", "utilization.memory", "memory.used", "memory.total"),
    *("temperature.gpu", _MARGIN_FIELD, "power.draw", "enforced.power.limit"),
    "clocks.current.sm",
    _REASONS_FIELD,
    *(
        f"ecc.errors.{k}.{s}.total"
        for k in ("corrected", "uncorrected")
        for s in ("volatile", "aggregate")
    ),
    "retired_pages.pending",
    *(f"remapped_rows.{f}" for f in ("correctable", "uncorrectable", "pending", "failure")),
)
LEGACY_FIELDS = tuple(_LEGACY_REASONS_FIELD if f == _REASONS_FIELD else f for f in FIELDS)


def query_command(fields: Sequence[str] = FIELDS) -> str:
    return f"nvidia-smi --query-gpu={','.join(fields)} --format=csv,noheader,nounits"


SMI_COMMAND = query_command(FIELDS)

_MIB = 1024 * 1024
_FLAGS = {"yes": 1, "enabled": 1, "active": 1, "no": 0, "disabled": 0, "not active": 0}
_DRIVER_FAILURES = ("NVIDIA-SMI has failed", "Failed to initialize NVML")
_NO_DEVICES = "No devices were found"
_UNKNOWN_FIELD = re.compile(r'Field "(?P<field>[^"]+)" is not a valid field to query')
# Driver 5xx: "...for GPU1: 0000:34:00.0: GPU is lost.  Reboot the system to recover this
# GPU"; older: "...for GPU 0000:05:00.0: Unknown Error" (also without the space).
_HANDLE_FAILURE = re.compile(
    r"Unable to determine the device handle for GPU\s*(?:(?P<index>\d+):\s+)?"
    r"(?:(?P<bus>[0-9A-Fa-f]+:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?):\s*)?(?P<reason>.*)"
)


# --- one nvidia-smi answer --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HandleFailure:
    """A GPU nvidia-smi enumerated but could not open; `lost` when the driver says so."""

    index: str | None
    pci_bus_id: str | None
    reason: str

    @property
    def lost(self) -> bool:
        return "GPU is lost" in self.reason


@dataclass(slots=True)
class SmiReading:
    """What one `nvidia-smi --query-gpu` run said about a node's GPUs."""

    samples: list[Sample] = field(default_factory=list)  # of the GPUs that answered
    bus_ids: dict[str, str] = field(default_factory=dict)  # gpu index -> pci.bus_id
    visible: int = 0
    failures: list[HandleFailure] = field(default_factory=list)


class UnknownFieldError(Exception):
    """This driver's nvidia-smi does not know one of the queried fields."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _absent(cell: str) -> bool:
    # [N/A], [Not Supported], [Requested functionality has been deprecated], [Unknown Error]
    return cell in ("", "N/A") or (cell.startswith("[") and cell.endswith("]"))


def _flag(cell: str) -> float:
    return float(_FLAGS[cell.lower()])  # KeyError -> bad output


# field -> (metric, extra labels, parse of a present cell to the base unit)
_CONVERSIONS: dict[str, tuple[Metric, tuple[str, ...], Callable[[str], float]]] = {
    "utilization.gpu": (catalog.GPU_UTILIZATION, (), lambda c: float(c) / 100),
    "utilization.memory": (catalog.GPU_MEMORY_UTILIZATION, (), lambda c: float(c) / 100),
    "memory.used": (catalog.GPU_MEMORY_USED, (), lambda c: float(c) * _MIB),
    "memory.total": (catalog.GPU_MEMORY_TOTAL, (), lambda c: float(c) * _MIB),
    "temperature.gpu": (catalog.GPU_TEMPERATURE, (), float),
    "power.draw": (catalog.GPU_POWER_DRAW, (), float),
    "enforced.power.limit": (catalog.GPU_POWER_LIMIT, (), float),
    "clocks.current.sm": (catalog.GPU_SM_CLOCK, (), lambda c: float(c) * 1_000_000),
    "retired_pages.pending": (catalog.GPU_RETIRED_PAGES_PENDING, (), _flag),
    "remapped_rows.correctable": (catalog.GPU_REMAPPED_ROWS, ("correctable",), float),
    "remapped_rows.uncorrectable": (catalog.GPU_REMAPPED_ROWS, ("uncorrectable",), float),
    "remapped_rows.pending": (catalog.GPU_REMAP_PENDING, (), _flag),
    "remapped_rows.failure": (catalog.GPU_REMAP_FAILURE, (), _flag),
}
for _kind in ("corrected", "uncorrected"):
    for _scope in ("volatile", "aggregate"):
        _CONVERSIONS[f"ecc.errors.{_kind}.{_scope}.total"] = (
            catalog.GPU_ECC_ERRORS,
            (_kind, _scope),
            lambda c: float(int(c)),
        )


def _row_samples(node: str, fields: Sequence[str], cells: list[str]) -> tuple[str, list[Sample]]:
    """The GPU index and samples of one CSV row; ValueError/KeyError if it is malformed."""
    if len(cells) != len(fields):
        raise ValueError(f"{len(cells)} cells, expected {len(fields)}")
    row = dict(zip(fields, cells, strict=True))
    gpu = str(int(row["index"]))
    info = [("" if _absent(row[f]) else row[f]) for f in ("uuid", "name", "pci.bus_id")]
    out = [sample(catalog.GPU_INFO, (node, gpu, *info), 1)]
    for name, cell in row.items():
        if _absent(cell):
            continue
        if name in (_REASONS_FIELD, _LEGACY_REASONS_FIELD):
            out.extend(clock_event_samples(node, gpu, int(cell, 16)))
        elif name == _MARGIN_FIELD:
            if not _absent(row["temperature.gpu"]):
                slowdown = float(row["temperature.gpu"]) + float(cell)
                out.append(sample(catalog.GPU_SLOWDOWN_TEMPERATURE, (node, gpu), slowdown))
        elif name in _CONVERSIONS:
            metric, extra, convert = _CONVERSIONS[name]
            out.append(sample(metric, (node, gpu, *extra), convert(cell)))
    return gpu, out


def parse_query_output(node: str, result: FinishedCommand, fields: Sequence[str]) -> SmiReading:
    """Read `nvidia-smi --query-gpu=FIELDS --format=csv,noheader,nounits` output.

    Raises CollectError "driver" (nvidia-smi cannot reach the driver), "bad_output" (a
    line it cannot read) or "command_failed" (a non-zero exit with nothing recognisable),
    and UnknownFieldError when the driver rejects a field name.
    """
    everything = f"{result.stdout}\n{result.stderr}"
    for line in everything.splitlines():
        if line.strip().startswith(_DRIVER_FAILURES):
            raise CollectError("driver", f"{node}: {line.strip()}")
        unknown = _UNKNOWN_FIELD.search(line)
        if unknown:
            raise UnknownFieldError(unknown["field"])
    reading = SmiReading()
    recognised = False
    # Handle failures go to stdout on the drivers we know, to stderr on some others.
    for line in result.stderr.splitlines():
        failure = _HANDLE_FAILURE.search(line)
        if failure:
            reading.failures.append(_failure(failure))
    for line in result.stdout.splitlines():
        text = line.strip()
        if not text:
            continue
        failure = _HANDLE_FAILURE.search(text)
        if failure:
            reading.failures.append(_failure(failure))
        elif text == _NO_DEVICES:
            recognised = True
        else:
            try:
                cells = next(csv.reader([text], skipinitialspace=True))
                gpu, samples = _row_samples(node, fields, [c.strip() for c in cells])
            except (ValueError, KeyError) as error:
                raise CollectError(
                    "bad_output", f"{node}: unreadable nvidia-smi line ({error}): {text!r}"
                ) from error
            reading.samples.extend(samples)
            reading.bus_ids[gpu] = cells[fields.index("pci.bus_id")].strip()
            reading.visible += 1
    recognised = recognised or reading.visible > 0 or bool(reading.failures)
    if result.exit_status != 0 and not recognised:
        excerpt = (result.stderr.strip() or result.stdout.strip())[:200]
        raise CollectError(
            "command_failed", f"{node}: nvidia-smi exited {result.exit_status}: {excerpt!r}"
        )
    return reading


def _failure(match: re.Match[str]) -> HandleFailure:
    return HandleFailure(match["index"], match["bus"], match["reason"].strip())


# --- the collector -----------------------------------------------------------------------
@dataclass(slots=True)
class _NodeState:
    unopened: Unopened
    kernel_log: KernelLog
    fields: tuple[str, ...] = FIELDS
    gpu_of_bus: dict[PciKey, str] = field(default_factory=dict)
    xids: XidLedger = field(default_factory=XidLedger)
    unreadable: str | None = None  # why the kernel log cannot be read, as last logged
    lock: threading.Lock = field(default_factory=threading.Lock)


class SmiGpuCollector:
    """Remote nodes' GPUs through nvidia-smi and the kernel log; see the module docstring.

    `kernel_log_commands` maps a node to its `kernel_log_command` (a validated
    `sudo -n dmesg`, ...); a node it does not name tries journalctl, then dmesg.
    """

    name = base.GPU

    def __init__(
        self,
        nodes: Mapping[str, tuple[CommandRunner, int]],
        *,
        timeout: float = 10.0,
        kernel_log_commands: Mapping[str, str | None] | None = None,
    ) -> None:
        self.nodes = dict(nodes)
        self.timeout = timeout
        commands = kernel_log_commands or {}
        self._states = {
            node: _NodeState(Unopened(node), KernelLog(commands.get(node))) for node in self.nodes
        }

    def targets(self) -> Sequence[str]:
        return list(self.nodes)

    def collect(self, target: str) -> Sequence[Sample]:
        """The node's GPU samples, or CollectError (timeout, unreachable, driver, ...)."""
        runner, expected = self.nodes[target]
        state = self._states[target]
        deadline = time.monotonic() + self.timeout
        with state.lock:
            reading = self._query(target, runner, state, deadline)
            for gpu, bus_id in reading.bus_ids.items():
                key = pci_key(bus_id)
                if key is not None:
                    state.gpu_of_bus[key] = gpu
            samples = list(reading.samples)
            samples.extend(sample(catalog.GPU_LOST, (target, g), 0) for g in reading.bus_ids)
            lost = 0
            state.unopened.opened(reading.bus_ids)
            for failure in reading.failures:
                failed = self._gpu_of_failure(state, failure)
                if not failure.lost:
                    state.unopened.failed(str(failed or failure.pci_bus_id), failure.reason)
                    continue
                lost += 1
                if failed is not None:
                    samples.append(sample(catalog.GPU_LOST, (target, failed), 1))
            samples.extend(
                node_count_samples(target, expected=expected, visible=reading.visible, lost=lost)
            )
            readable = self._read_kernel_log(target, runner, state, deadline)
            if readable is not None:
                samples.append(sample(catalog.NODE_KERNEL_LOG_READABLE, (target,), readable))
            samples.extend(state.xids.samples(target))
        return samples

    def _query(
        self, node: str, runner: CommandRunner, state: _NodeState, deadline: float
    ) -> SmiReading:
        while True:
            result = _run(node, runner, query_command(state.fields), deadline)
            try:
                return parse_query_output(node, result, state.fields)
            except UnknownFieldError as error:
                # An older driver: ask again in its words, without what it cannot tell.
                if error.field == _REASONS_FIELD:
                    state.fields = tuple(
                        _LEGACY_REASONS_FIELD if f == _REASONS_FIELD else f for f in state.fields
                    )
                elif error.field == _MARGIN_FIELD:
                    state.fields = tuple(f for f in state.fields if f != _MARGIN_FIELD)
                else:
                    raise CollectError(
                        "bad_output", f"{node}: nvidia-smi rejects field {error.field!r}"
                    ) from error

    def _gpu_of_failure(self, state: _NodeState, failure: HandleFailure) -> str | None:
        if failure.index is not None:
            if failure.pci_bus_id and (key := pci_key(failure.pci_bus_id)) is not None:
                state.gpu_of_bus[key] = failure.index
            return failure.index
        key = pci_key(failure.pci_bus_id) if failure.pci_bus_id else None
        return state.gpu_of_bus.get(key) if key is not None else None

    def _read_kernel_log(
        self, node: str, runner: CommandRunner, state: _NodeState, deadline: float
    ) -> bool | None:
        """Add the log's new XIDs to the ledger; whether the log could be read (None: the
        read did not finish, as when SSH failed). A log we cannot read costs the XIDs, not
        the node's GPU samples."""
        kernel_log = state.kernel_log
        problems: list[str] = []
        for source in kernel_log.order():
            try:
                read = self._read_source(node, runner, kernel_log, source, deadline)
            except CollectError as error:
                log.warning("%s: kernel log not read: %s", node, error)
                return None
            if read.problem is None:
                self._record_xids(state, read.xids)
                if state.unreadable is not None:
                    state.unreadable = None
                    log.info("%s: kernel log readable again: XID detection on", node)
                return True
            problems.append(read.problem)
        why = "; ".join(problems)
        if why != state.unreadable:
            state.unreadable = why
            log.warning("%s: XID detection off, the kernel log cannot be read: %s", node, why)
        return False

    def _read_source(
        self,
        node: str,
        runner: CommandRunner,
        kernel_log: KernelLog,
        source: Source,
        deadline: float,
    ) -> KernelRead:
        dropped = kernel_log.dropped
        result = _run(node, runner, kernel_log.script(source), deadline)
        read = kernel_log.read(source, result.stdout)
        if read.again:  # a cursor journalctl refused: the tail instead
            result = _run(node, runner, kernel_log.script(source), deadline)
            read = kernel_log.read(source, result.stdout)
        if kernel_log.dropped > dropped:
            missed = kernel_log.dropped - dropped
            log.warning("%s: %d kernel log lines came between two reads, not read", node, missed)
        return read

    def _record_xids(self, state: _NodeState, xids: Sequence[KernelXid]) -> None:
        for xid in xids:
            key = pci_key(xid.pci_bus_id)
            gpu = state.gpu_of_bus.get(key) if key is not None else None
            # A GPU we never saw on this bus keeps its PCI id, so the XID is not lost.
            state.xids.record(gpu or xid.pci_bus_id, xid.code, xid.at)


def _run(node: str, runner: CommandRunner, command: str, deadline: float) -> FinishedCommand:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise CollectError("timeout", f"{node}: no time left to run {command.split()[0]}")
    try:
        return runner.run(command, timeout=remaining)
    except CollectError:
        raise
    except Exception as error:
        reason = getattr(error, "reason", None)
        if isinstance(reason, str):  # the runner's own typed error (reliability.ssh)
            raise CollectError(reason, str(error)) from error
        if isinstance(error, TimeoutError):
            message = f"{command.split()[0]} did not finish in {remaining:.1f}s"
            raise CollectError("timeout", f"{node}: {message}") from error
        if isinstance(error, OSError):
            raise CollectError("unreachable", f"{node}: {error}") from error
        raise
