"""`nvidia-smi` stand-in: prints what the real tool prints, from the node's state document.

Supported: ``--query-gpu=F,... --format=csv[,noheader][,nounits] [-i ID[,ID]]``, ``-L`` and
``--version``. Field names, aliases and units are in gpu_fields.py; the shapes follow a
real driver 590 capture of an H100 80GB HBM3:

* cells are joined by ``", "``; the header shows units in brackets (``memory.used [MiB]``)
  except for temperatures, which carry none; ``nounits`` drops them from the values only;
* the header echoes the name as queried, so aliases (``clocks.sm``,
  ``clocks_throttle_reasons.active``) come back as asked;
* unsupported values print ``[N/A]``; a known field the rig does not model prints ``[N/A]``;
* an unknown field prints ``Field "x" is not a valid field to query.`` and exits 2;
* errors go to stdout, as the real tool does, with its exit codes (2 bad argument,
  6 no devices, 9 driver unreachable, 15 GPU lost).

GPU state per slot (see rigstate.py): ``status`` is ``ok``, ``missing`` (not enumerated:
fewer rows, later GPUs renumbered) or ``lost`` (enumerated, but its handle fails: the
real "GPU is lost" line in place of its row, exit 15).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from reliability.testing import state
from reliability.testing.gpu_fields import (
    CUDA_VERSION,
    DRIVER_VERSION,
    MASKS,
    REASON_BITS,
    TWO_DECIMALS,
    UNITS,
    canonical,
)

SLOWDOWN_CELSIUS = 87  # an H100 80GB HBM3's: the capture shows 41 C with a margin of 46
DRIVER_FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n\n"
)
BAD_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"
NO_DEVICES = "No devices were found\n"
EXIT_BAD_ARGUMENT, EXIT_NOT_FOUND, EXIT_DRIVER, EXIT_GPU_LOST = 2, 6, 9, 15


def _cell(field: str, values: dict[str, Any], derived: dict[str, Any], nounits: bool) -> str:
    """One CSV cell; ``derived`` holds what is not per-GPU state (index, count, ...)."""
    name = canonical(field) or field
    if name in derived:
        value: Any = derived[name]
    elif name == "memory.free" and name not in values:
        value = values["memory.total"] - values["memory.reserved"] - values["memory.used"]
    elif name == "temperature.gpu.tlimit" and name not in values:
        # The margin to the board's slowdown threshold, so it shrinks as the GPU heats.
        value = SLOWDOWN_CELSIUS - values["temperature.gpu"]
    elif name.startswith("clocks_event_reasons.") and name not in MASKS:
        bit = REASON_BITS[name.rsplit(".", 1)[1]]
        value = "Active" if values.get("clocks_event_reasons.active", 0) & bit else "Not Active"
    else:
        value = values.get(name)
    if value is None:
        return "[N/A]"
    if name in MASKS:
        return f"0x{int(value):016X}"
    if isinstance(value, bool):
        value = "Yes" if value else "No"
    if isinstance(value, str):
        return value
    unit = UNITS[name]
    text = f"{value:.2f}" if unit == "W" or name in TWO_DECIMALS else str(value)
    return text if nounits or unit is None else f"{text} {unit}"


def _header(fields: Sequence[str]) -> str:
    cells = []
    for field in fields:
        unit = UNITS[canonical(field) or field]
        cells.append(f"{field} [{unit}]" if unit else field)
    return ", ".join(cells)


def lost_message(index: int, bus_id: str) -> str:
    """The real line for a GPU whose handle cannot be obtained (driver 5xx form)."""
    # pci.bus_id has an 8-digit domain; the message uses the 4-digit form.
    short = bus_id[4:] if len(bus_id) == 16 else bus_id
    return (
        f"Unable to determine the device handle for GPU{index}: {short}: "
        "GPU is lost.  Reboot the system to recover this GPU"
    )


def _enumerated(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [gpu for gpu in document["nvidia"]["gpus"] if gpu.get("status", "ok") != "missing"]


def _selected(gpus: list[dict[str, Any]], ids: str | None) -> list[tuple[int, dict[str, Any]]]:
    indexed = list(enumerate(gpus))
    if ids is None:
        return indexed
    wanted = {part.strip().upper() for part in ids.split(",")}
    return [
        (i, gpu)
        for i, gpu in indexed
        if str(i) in wanted
        or gpu["values"].get("uuid", "").upper() in wanted
        or gpu["values"].get("pci.bus_id", "").upper() in wanted
    ]


def render(document: dict[str, Any], argv: Sequence[str]) -> tuple[str, int]:
    """What ``nvidia-smi ARGV`` prints on stdout and its exit code, for this node state."""
    options = _parse(argv)
    if options is None:
        return BAD_ARGS, EXIT_BAD_ARGUMENT
    if document["nvidia"].get("failure"):
        return DRIVER_FAILED, EXIT_DRIVER
    version = document["nvidia"].get("driver_version", DRIVER_VERSION)
    if "version" in options:
        cuda = document["nvidia"].get("cuda_version", CUDA_VERSION)
        return (
            f"NVIDIA-SMI version  : {version}\nNVML version        : {version.rsplit('.', 1)[0]}\n"
            f"DRIVER version      : {version}\nCUDA Version        : {cuda}\n"
        ), 0
    gpus = _enumerated(document)
    chosen = _selected(gpus, options.get("id"))
    if not chosen:
        return NO_DEVICES, EXIT_NOT_FOUND
    if "list" in options:
        return _list(chosen)
    fields = [f for f in options["query"].split(",") if f]
    for field in fields:
        if canonical(field) is None:
            return f'Field "{field}" is not a valid field to query.\n\n', EXIT_BAD_ARGUMENT
    formats = set(options["format"].split(","))
    if "csv" not in formats or not formats <= {"csv", "noheader", "nounits"}:
        return BAD_ARGS, EXIT_BAD_ARGUMENT
    lines = [] if "noheader" in formats else [_header(fields)]
    now = time.time()
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    common = {"count": len(gpus), "driver_version": version, "timestamp": stamp}
    code = 0
    for index, gpu in chosen:
        if gpu.get("status") == "lost":
            lines.append(lost_message(index, gpu["values"]["pci.bus_id"]))
            code = EXIT_GPU_LOST
            continue
        derived = common | {"index": index}
        cells = [_cell(f, gpu["values"], derived, "nounits" in formats) for f in fields]
        lines.append(", ".join(cells))
    return "\n".join(lines) + "\n", code


def _list(chosen: list[tuple[int, dict[str, Any]]]) -> tuple[str, int]:
    lines, code = [], 0
    for index, gpu in chosen:
        values = gpu["values"]
        if gpu.get("status") == "lost":
            lines.append(lost_message(index, values["pci.bus_id"]))
            code = EXIT_GPU_LOST
        else:
            lines.append(f"GPU {index}: {values['name']} (UUID: {values['uuid']})")
    return "\n".join(lines) + "\n", code


def _parse(argv: Sequence[str]) -> dict[str, str] | None:
    """Options as {"query"|"format"|"id"|"list"|"version": value}; None if unusable."""
    takes_value = {"--query-gpu": "query", "--format": "format", "-i": "id", "--id": "id"}
    options: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if key in takes_value:
            if not eq:
                if not args:
                    return None
                value = args.pop(0)
            options[takes_value[key]] = value
        elif arg in ("-L", "--list-gpus"):
            options["list"] = ""
        elif arg == "--version":
            options["version"] = ""
        else:
            return None
    modes = {"query", "list", "version"} & options.keys()
    if len(modes) != 1 or ("query" in options) != ("format" in options):
        return None
    return options


def main(argv: Sequence[str] | None = None) -> int:
    try:
        document = state.read_current_node()
    except state.RigStateError as error:
        print(error, file=sys.stderr)
        return 255
    out, code = render(document, sys.argv[1:] if argv is None else argv)
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
