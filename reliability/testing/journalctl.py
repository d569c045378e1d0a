"""`journalctl` stand-in (systemd 252 output shapes) over the node's simulated kernel log.

Supported: ``-k``/``--dmesg`` (required: the node's journal holds only its kernel lines),
``-o``/``--output`` ``short-monotonic`` (``[ 5.123456] host kernel: text``),
``--no-pager``, ``-q``/``--quiet``, ``--show-cursor`` (``-- cursor: s=...;i=...;b=...``
after the last line), ``--after-cursor=C`` and ``-n``/``--lines=N``. Lines are numbered
by their place in the log; a cursor of another boot reads this boot from its start, as
``-k`` (this boot only) does. A cursor that does not parse fails as journalctl's does.

The document's ``kernel.journal`` ``denied`` is a login in neither the ``adm`` nor the
``systemd-journal`` group: no entries, journalctl's hint on stderr, exit 0.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from reliability.testing import state

_SEQNUM_ID = "4e6f2a1c9b8d4f0e8a7b6c5d4e3f2a1b"
_CURSOR = re.compile(r"s=[0-9a-f]{32};i=(?P<i>[0-9a-f]+);b=(?P<boot>[0-9a-f]{32});m=[0-9a-f]+;.*")
HINT = (
    "Hint: You are currently not seeing messages from other users and the system.\n"
    "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
    "      Pass -q to turn off this notice.\n"
)
NO_ENTRIES = "-- No entries --\n"
BAD_CURSOR = "Failed to seek to cursor: Invalid argument\n"


def _cursor(index: int, boot_id: str, monotonic: float, realtime: float) -> str:
    usec = round(monotonic * 1e6)
    return (
        f"s={_SEQNUM_ID};i={index:x};b={boot_id};m={usec:x};t={round(realtime * 1e6):x};"
        f"x={(index * 2654435761) & 0xFFFFFFFFFFFFFFFF:x}"
    )


def render(document: dict[str, Any], argv: Sequence[str]) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of ``journalctl ARGV`` for this node state."""
    options, error = _parse(argv)
    if error:
        return "", error, 1
    kernel = document.get("kernel", {})
    quiet = "quiet" in options
    if kernel.get("journal") == "denied":
        return ("" if quiet else NO_ENTRIES), ("" if quiet else HINT), 0
    boot_id = str(kernel.get("boot_id", "")).replace("-", "")
    boot = float(kernel.get("boot_time", 0.0))
    entries = list(enumerate(sorted(kernel.get("lines", []), key=lambda line: line[0]), 1))
    after = options.get("after")
    if after is not None:
        match = _CURSOR.fullmatch(after)
        if match is None:
            return "", BAD_CURSOR, 1
        if match["boot"] == boot_id:
            entries = [(i, line) for i, line in entries if i > int(match["i"], 16)]
    if "lines" in options:
        entries = entries[-int(options["lines"]) :] if int(options["lines"]) else []
    host = document.get("name", "localhost")
    out = [
        f"[{max(float(at) - boot, 0.0):12.6f}] {host} kernel: {text}\n" for _, (at, text) in entries
    ]
    if not entries:
        return ("" if quiet else NO_ENTRIES), "", 0
    if "cursor" in options:
        index, (at, _) = entries[-1]
        out.append(f"-- cursor: {_cursor(index, boot_id, float(at) - boot, float(at))}\n")
    return "".join(out), "", 0


def _parse(argv: Sequence[str]) -> tuple[dict[str, str], str]:
    options: dict[str, str] = {}
    args = list(argv)
    takes = {"-o": "output", "--output": "output", "-n": "lines", "--lines": "lines"}
    takes["--after-cursor"] = "after"
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if key in takes:
            if not eq:
                if not args:
                    return options, f"journalctl: option '{key}' requires an argument\n"
                value = args.pop(0)
            options[takes[key]] = value
        elif arg in ("-k", "--dmesg"):
            options["kernel"] = ""
        elif arg in ("-q", "--quiet"):
            options["quiet"] = ""
        elif arg == "--show-cursor":
            options["cursor"] = ""
        elif arg == "--no-pager":
            pass
        else:
            return options, f"journalctl: unrecognized option '{arg}'\n"
    if options.get("output", "short-monotonic") != "short-monotonic":
        return options, f"rig journalctl: output {options['output']!r} is not simulated\n"
    if "kernel" not in options:
        return options, "rig journalctl: only the kernel log (-k) is simulated\n"
    if not options.get("lines", "0").isdigit():
        return options, f"Failed to parse lines '{options['lines']}'\n"
    return options, ""


def main(argv: Sequence[str] | None = None) -> int:
    return state.run_command(render, argv)


if __name__ == "__main__":
    sys.exit(main())
