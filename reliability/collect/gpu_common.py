"""What the GPU back ends share: clock-event bits, the XID ledger, node counts, GPUs that
cannot be opened, and the NVIDIA driver's kernel-log lines (PCI ids, XIDs)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect.base import Sample

# The bits of nvmlClocksEventReasons (nvml.h; the same bits as the older
# nvmlClocksThrottleReasons), named as nvidia-smi names its clocks_event_reasons.* fields.
# nvidia-smi's `clocks_event_reasons.active` prints this same mask in hex.
CLOCK_EVENT_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)

# Label value for an XID whose device the driver names but we cannot map to an index.
UNKNOWN_GPU = "unknown"

log = logging.getLogger(__name__)


class Unopened:
    """A node's GPUs the driver enumerates but cannot open: each logged once when it
    fails (or fails otherwise), and once when it opens again, never at every collection."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._reasons: dict[str, str] = {}

    def failed(self, gpu: str, reason: str) -> None:
        if self._reasons.get(gpu) != reason:
            self._reasons[gpu] = reason
            log.warning("%s: GPU %s cannot be opened: %s", self.node, gpu, reason)

    def opened(self, gpus: Iterable[str]) -> None:
        for gpu in sorted(self._reasons.keys() & set(gpus)):
            del self._reasons[gpu]
            log.info("%s: GPU %s opens again", self.node, gpu)


def sample(metric: Metric, labels: tuple[str, ...], value: float) -> Sample:
    return Sample(metric, labels, float(value))


def clock_event_samples(node: str, gpu: str, mask: int) -> Iterator[Sample]:
    """One 0/1 `GPU_CLOCK_EVENT` series per known reason, from the reasons bitmask."""
    for reason, bit in CLOCK_EVENT_REASONS:
        yield sample(catalog.GPU_CLOCK_EVENT, (node, gpu, reason), 1 if mask & bit else 0)


def node_count_samples(node: str, *, expected: int, visible: int, lost: int) -> list[Sample]:
    """`NODE_GPUS_EXPECTED/VISIBLE/LOST` for one node.

    `visible` counts GPUs that answered; `lost` those the driver reported lost. A GPU that
    is neither (not enumerated at all, or a handle that fails for another reason) counts
    as lost when the node has fewer than `expected`, so a dead GPU is never missed and
    never counted twice.
    """
    missing = max(expected - visible - lost, 0)
    return [
        sample(catalog.NODE_GPUS_EXPECTED, (node,), expected),
        sample(catalog.NODE_GPUS_VISIBLE, (node,), visible),
        sample(catalog.NODE_GPUS_LOST, (node,), lost + missing),
    ]


@dataclass(slots=True)
class _XidCount:
    count: int = 0
    last: float = 0.0


class XidLedger:
    """XIDs seen on one node: a count and the newest time per (gpu, code).

    Counts start at zero when the collector starts (a Prometheus counter reset); the
    back end decides what is new, the ledger only adds it up. Not thread-safe: each back
    end updates a node's ledger from one read at a time.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], _XidCount] = {}

    def record(self, gpu: str, code: int, at: float) -> None:
        entry = self._counts.setdefault((gpu, code), _XidCount())
        entry.count += 1
        entry.last = max(entry.last, at)

    def samples(self, node: str) -> list[Sample]:
        """`GPU_XID_ERRORS` (with NVIDIA's recommended action) and `GPU_XID_LAST`."""
        out: list[Sample] = []
        for (gpu, code), entry in sorted(self._counts.items()):
            action = catalog.xid_info(code).action.value
            out.append(sample(catalog.GPU_XID_ERRORS, (node, gpu, str(code), action), entry.count))
            out.append(sample(catalog.GPU_XID_LAST, (node, gpu, str(code)), entry.last))
        return out


# --- the kernel log ----------------------------------------------------------------------
_XID = re.compile(r"NVRM: Xid \(PCI:(?P<bus>[0-9A-Fa-f:.]+)\): (?P<code>\d+),")

PciKey = tuple[int, int, int]


def pci_key(bus_id: str) -> PciKey | None:
    """(domain, bus, device) of `00000000:3B:00.0` (nvidia-smi) or `0000:3b:00` (NVRM)."""
    parts = bus_id.strip().removeprefix("PCI:").split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".")[0], 16)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class KernelXid:
    """An XID line: when, on which PCI device (as NVRM prints it), which code."""

    at: float
    pci_bus_id: str
    code: int


def xid_of(line: str, at: float) -> KernelXid | None:
    """The XID a kernel log line reports (stamped `at`), or None."""
    match = _XID.search(line)
    return KernelXid(at, match["bus"], int(match["code"])) if match else None
