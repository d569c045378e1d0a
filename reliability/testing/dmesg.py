"""`dmesg` stand-in (util-linux 2.38 output shapes) over the node's simulated kernel log.

Supported: no options (``[ 1234.567890] text``), ``--time-format iso|ctime|notime``
(also ``--time-format=iso``), ``-T``/``--ctime``, ``-t``/``--notime``. The ISO form is
``2026-11-28T04:46:09,123456+00:00 text``, as real dmesg prints it. Unknown options get
util-linux's own error text and exit 1.

The kernel log lives in the node document as ``kernel.boot_time`` (epoch seconds) and
``kernel.lines`` (``[epoch, text]`` pairs); rigstate.py appends to it, for instance the
NVRM Xid lines that ``xid_line`` formats. With ``kernel.dmesg_restrict`` true it refuses
as util-linux does for an unprivileged user (exit 1).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from reliability.testing import state

# Descriptions from NVIDIA's Xid catalogue, used when a test names only the code.
XID_MESSAGES = {
    13: "Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
    31: "Ch 00000010, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted",
    43: "Ch 00000008, intr 00000000. Reset Channel Verif Error",
    45: "Ch 00000008, errorString CTX SWITCH TIMEOUT, Info 0x2c001",
    48: (
        "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer "
        "at partition 6, subpartition 0."
    ),
    63: "Row Remapper: New row (0x00000000000a7c30) Marked for Remapping, reset gpu to activate.",
    64: "Row Remapper: Failed to mark row (0x00000000000a7c30) for remapping.",
    74: "NVLink: fatal error detected on link 4(0x0, 0x0, 0x10000, 0x0, 0x0, 0x0, 0x0)",
    79: "GPU has fallen off the bus.",
    92: "High single-bit ECC error rate detected.",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
    95: "Uncontained: FBHUB. RST: Yes, D-RST: No",
}


def nvrm_pci(bus_id: str) -> str:
    """``00000000:3B:00.0`` (nvidia-smi form) -> ``PCI:0000:3b:00`` (NVRM form)."""
    parts = bus_id.lower().split(":")
    if len(parts) != 3:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    domain, bus, device = parts[0][-4:].rjust(4, "0"), parts[1], parts[2].split(".")[0]
    return f"PCI:{domain}:{bus}:{device}"


def xid_line(
    bus_id: str,
    code: int,
    message: str | None = None,
    *,
    pid: int | None = None,
    process: str | None = None,
) -> str:
    """The kernel line NVRM logs for an Xid, as ``dmesg`` shows it (without timestamp)."""
    text = message if message is not None else XID_MESSAGES.get(code, f"Xid {code} reported.")
    who = f"pid={pid}, name={process}" if pid is not None else "pid='<unknown>', name=<unknown>"
    return f"NVRM: Xid ({nvrm_pci(bus_id)}): {code}, {who}, {text}"


def _iso(epoch: float) -> str:
    local = time.localtime(epoch)
    offset = local.tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    micros = round(epoch % 1 * 1_000_000) % 1_000_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    return f"{stamp},{micros:06d}{sign}{hours:02d}:{minutes:02d}"


def _stamp(style: str, epoch: float, boot: float) -> str:
    if style == "iso":
        return _iso(epoch) + " "
    if style == "ctime":
        return time.strftime("[%a %b %e %H:%M:%S %Y] ", time.localtime(epoch))
    if style == "notime":
        return ""
    return f"[{max(epoch - boot, 0.0):12.6f}] "


def render(document: dict[str, Any], argv: Sequence[str]) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of ``dmesg ARGV`` for this node state."""
    style, error = _parse(argv)
    if error:
        return "", error, 1
    kernel = document.get("kernel", {})
    if kernel.get("dmesg_restrict"):
        return "", RESTRICTED, 1
    boot = float(kernel.get("boot_time", 0.0))
    lines = sorted(kernel.get("lines", []), key=lambda line: line[0])
    out = [_stamp(style, float(epoch), boot) + text for epoch, text in lines]
    return "".join(line + "\n" for line in out), "", 0


def _parse(argv: Sequence[str]) -> tuple[str, str]:
    # reltime ("[Nov28 04:44]" then deltas) is not simulated.
    styles = {"iso", "ctime", "notime"}
    style, args = "raw", list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-T", "--ctime"):
            style = "ctime"
        elif arg in ("-t", "--notime"):
            style = "notime"
        elif arg == "--time-format" or arg.startswith("--time-format="):
            value = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            if not value:
                return style, "dmesg: option '--time-format' requires an argument\n" + _TRY
            if value not in styles:
                return style, f"dmesg: unknown time format: {value}\n"
            style = value
        elif arg.startswith("--"):
            return style, f"dmesg: unrecognized option '{arg}'\n" + _TRY
        else:
            return style, f"dmesg: invalid option -- '{arg.lstrip('-')[:1]}'\n" + _TRY
    return style, ""


_TRY = "Try 'dmesg --help' for more information.\n"
# What util-linux prints for an unprivileged user while kernel.dmesg_restrict=1.
RESTRICTED = "dmesg: read kernel buffer failed: Operation not permitted\n"


def main(argv: Sequence[str] | None = None) -> int:
    return state.run_command(render, argv)


if __name__ == "__main__":
    sys.exit(main())
