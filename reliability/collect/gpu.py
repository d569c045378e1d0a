"""The GPU collector: one seam, two back ends that produce the same catalogue series.

* `NvmlGpuCollector` (gpu_nvml.py) reads the local GPUs through NVML (`pynvml`), every
  call under a watchdog, with XIDs from an NVML event set;
* `SmiGpuCollector` (gpu_smi.py) runs `nvidia-smi --query-gpu` over SSH on each node and
  reads XIDs from what is new in the kernel log (kernel_log.py: journalctl or dmesg).

Both are `Collector`s named "gpu"; labels are `node` and `gpu` (the driver's index, as a
string) as in `catalog.GPU`. What they share is in gpu_common.py.

`python -m reliability.collect.gpu` prints what NVML reads on this machine, as a table.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence

from reliability import catalog
from reliability.collect.base import CollectError, Sample
from reliability.collect.gpu_nvml import NvmlGpuCollector
from reliability.collect.gpu_smi import CommandRunner, FinishedCommand, SmiGpuCollector

__all__ = [
    "CommandRunner",
    "FinishedCommand",
    "NvmlGpuCollector",
    "SmiGpuCollector",
    "format_table",
    "main",
]

_HEADER = ("metric", "labels", "value")


def format_table(samples: Sequence[Sample]) -> str:
    """The samples as an aligned text table: metric, labels, value."""
    rows = [
        (
            s.metric.name.removeprefix(catalog.PREFIX),
            ",".join(f"{k}={v}" for k, v in s.label_dict().items() if k != "node"),
            f"{s.value:g}" if isinstance(s.value, float) else str(s.value),
        )
        for s in samples
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(_HEADER)]
    lines = [_HEADER, *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print what NVML reports for this machine's GPUs (used once on a GPU box)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--node", default=socket.gethostname())
    parser.add_argument("--expected", type=int, default=0, help="GPUs the node should have")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds, then read again")
    args = parser.parse_args(argv)
    collector = NvmlGpuCollector(node=args.node, expected_gpus=args.expected, timeout=args.timeout)
    try:
        samples = collector.collect(args.node)
        if args.wait > 0:  # a second read shows counters moving and XIDs drained
            time.sleep(args.wait)
            samples = collector.collect(args.node)
    except CollectError as error:
        print(f"collect failed ({error.reason}): {error}", file=sys.stderr)
        return 1
    finally:
        collector.close()
    print(f"node {args.node}: {len(samples)} samples")
    print(format_table(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
