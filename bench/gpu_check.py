"""Check the two GPU back ends against each other on a real GPU machine.

    python bench/gpu_check.py [--reads N]

Reads this machine's GPUs through the NVML back end (`NvmlGpuCollector`, pynvml) and
through the nvidia-smi back end (`SmiGpuCollector` running the real `nvidia-smi` here, in
the CSV format it parses over SSH), and compares every series the two both report: names,
UUIDs, PCI ids, memory total, power limit, ECC and row-remap counters exactly; moving
values (utilisation, memory used, temperature, power draw, SM clock) within the
tolerance the table shows. Clock event reasons are listed but not judged: a GPU's idle
and power-cap bits change between two reads. Then it times N NVML reads (one whole
`collect`) and one nvidia-smi call, per GPU.

Exit status: 0 when every shared series agrees (or when there is no GPU here: no NVML
library or no nvidia-smi, which it says), 1 on a mismatch or when a back end fails.
Needs only the installed package (`pip install reliability`, which brings nvidia-ml-py).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reliability import catalog
from reliability.catalog import Metric
from reliability.collect.base import CollectError, Sample
from reliability.collect.gpu_nvml import NvmlGpuCollector
from reliability.collect.gpu_smi import SmiGpuCollector

MIB = 1024 * 1024


@dataclass(frozen=True)
class Tolerance:
    """How far the two readings of one series may be apart; `judged` False: shown only."""

    text: str
    within: Callable[[float, float], bool]
    judged: bool = True


EXACT = Tolerance("exact", lambda a, b: a == b)


def _absolute(limit: float, unit: str = "") -> Tolerance:
    return Tolerance(f"±{limit:g}{unit}", lambda a, b: abs(a - b) <= limit)


def _relative(share: float, floor: float, unit: str) -> Tolerance:
    return Tolerance(
        f"±{share:.0%} (≥{floor:g}{unit})",
        lambda a, b: abs(a - b) <= max(share * max(abs(a), abs(b)), floor),
    )


# nvidia-smi prints memory in whole MiB (rounded down); NVML counts bytes.
SAME_MIB = Tolerance("same MiB", lambda a, b: a // MIB == b // MIB)
TOLERANCES: dict[Metric, Tolerance] = {
    catalog.GPU_UTILIZATION: _absolute(0.2),
    catalog.GPU_MEMORY_UTILIZATION: _absolute(0.2),
    catalog.GPU_MEMORY_USED: _relative(0.05, 512 * MIB, " B"),
    catalog.GPU_MEMORY_TOTAL: SAME_MIB,
    catalog.GPU_TEMPERATURE: _absolute(3, " °C"),
    catalog.GPU_SLOWDOWN_TEMPERATURE: _absolute(1, " °C"),
    catalog.GPU_POWER_DRAW: _relative(0.25, 30, " W"),
    catalog.GPU_POWER_LIMIT: _absolute(0.5, " W"),
    catalog.GPU_SM_CLOCK: _relative(0.2, 100e6, " Hz"),
    catalog.GPU_CLOCK_EVENT: Tolerance("shown only", lambda a, b: a == b, judged=False),
}
# Counted from different sources (NVML events since start, the kernel log's tail): not
# the same reading, so not compared.
NOT_SHARED = {catalog.GPU_XID_ERRORS, catalog.GPU_XID_LAST}


@dataclass(frozen=True)
class Row:
    metric: str
    labels: str
    nvml: str
    smi: str
    tolerance: str
    verdict: str  # ok, MISMATCH, only-nvml, only-smi, shown


def _key(sample: Sample) -> tuple[Metric, tuple[str, ...]]:
    if sample.metric is catalog.GPU_INFO:  # identity lives in the labels: node, gpu
        return sample.metric, sample.labels[:2]
    return sample.metric, sample.labels


def _show(sample: Sample) -> str:
    if sample.metric is catalog.GPU_INFO:
        return " ".join(sample.labels[2:])
    value = sample.value
    return f"{value:g}" if isinstance(value, float) else str(value)


def compare(nvml: Sequence[Sample], smi: Sequence[Sample]) -> list[Row]:
    """One row per series of a metric both back ends report, in catalogue order."""
    left = {_key(s): s for s in nvml if s.metric not in NOT_SHARED}
    right = {_key(s): s for s in smi if s.metric not in NOT_SHARED}
    shared = {m for m, _ in left} & {m for m, _ in right}
    order = {m: i for i, m in enumerate(catalog.ALL)}
    keys = sorted(
        {k for k in left.keys() | right.keys() if k[0] in shared},
        key=lambda k: (order[k[0]], k[1]),
    )
    rows = []
    for key in keys:
        metric, labels = key
        a, b = left.get(key), right.get(key)
        tolerance = EXACT if metric is catalog.GPU_INFO else TOLERANCES.get(metric, EXACT)
        if a is None or b is None:
            verdict = "only-smi" if a is None else "only-nvml"
        elif metric is catalog.GPU_INFO:
            verdict = "ok" if a.labels == b.labels else "MISMATCH"
        elif not tolerance.judged:
            verdict = "shown"
        else:
            ok = tolerance.within(float(a.value), float(b.value))  # type: ignore[arg-type]
            verdict = "ok" if ok else "MISMATCH"
        rows.append(
            Row(
                metric.name.removeprefix(catalog.PREFIX),
                ",".join(labels[1:]),
                _show(a) if a else "-",
                _show(b) if b else "-",
                tolerance.text,
                verdict,
            )
        )
    return rows


def failed(rows: Sequence[Row]) -> list[Row]:
    """Rows that make the check fail: a value apart, or a series only one back end has."""
    return [r for r in rows if r.verdict in ("MISMATCH", "only-nvml", "only-smi")]


def table(rows: Sequence[Row]) -> str:
    header = ("metric", "labels", "nvml", "nvidia-smi", "tolerance", "verdict")
    lines = [header, *((r.metric, r.labels, r.nvml, r.smi, r.tolerance, r.verdict) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def no_gpu_reason() -> str | None:
    """Why this machine has no GPU to check (no nvidia-smi, no NVML library), or None."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi is not on the PATH"
    try:
        import pynvml
    except ImportError:
        return "pynvml (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return "the NVML library (libnvidia-ml.so.1) is not installed"
    except pynvml.NVMLError as error:
        return f"NVML cannot start: {error}"
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return "NVML finds no GPU"
    finally:
        pynvml.nvmlShutdown()
    return None


@dataclass(frozen=True)
class Finished:
    exit_status: int
    stdout: str
    stderr: str


class LocalShell:
    """Runs the nvidia-smi back end's commands here, as SSH would run them on a node."""

    def run(self, command: str, *, timeout: float) -> Finished:
        done = subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout
        )
        return Finished(done.returncode, done.stdout, done.stderr)


def gpu_count(samples: Sequence[Sample]) -> int:
    return sum(1 for s in samples if s.metric is catalog.GPU_INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=20, help="NVML reads to time")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason:
        print(f"no GPU to check on this machine: {reason}. Nothing compared (exit 0).")
        return 0
    node = socket.gethostname()
    nvml = NvmlGpuCollector(node=node, expected_gpus=0, timeout=args.timeout)
    smi = SmiGpuCollector({node: (LocalShell(), 0)}, timeout=args.timeout)
    try:
        from_nvml = list(nvml.collect(node))
        start = time.perf_counter()
        from_smi = list(smi.collect(node))
        smi_seconds = time.perf_counter() - start
        timings = []
        for _ in range(max(args.reads, 1)):
            start = time.perf_counter()
            nvml.collect(node)
            timings.append(time.perf_counter() - start)
    except CollectError as error:
        print(f"a back end failed ({error.reason}): {error}", file=sys.stderr)
        return 1
    finally:
        nvml.close()
    rows = compare(from_nvml, from_smi)
    gpus = max(gpu_count(from_nvml), 1)
    print(f"node {node}: {gpu_count(from_nvml)} GPUs by NVML, {gpu_count(from_smi)} by nvidia-smi")
    print(table(rows))
    timings.sort()
    median = timings[len(timings) // 2]
    print()
    for what, seconds in (
        (f"NVML collect, median of {len(timings)}", median),
        ("nvidia-smi back end, one read", smi_seconds),
    ):
        print(f"{what:<32} {seconds * 1e3:8.1f} ms a read {seconds / gpus * 1e3:7.1f} ms a GPU")
    bad = failed(rows)
    print()
    if bad or not rows:
        print(
            f"FAIL: {len(bad)} of {len(rows)} shared series disagree"
            if rows
            else "FAIL: nothing shared"
        )
        return 1
    print(f"OK: {len(rows)} shared series agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
