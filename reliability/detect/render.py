"""What an on-call engineer reads: values with their units, the title and summary
templates filled in, and the runbook command to paste, parameters shell-quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from datetime import UTC, datetime

from reliability.config_rules import RunbookSuggestion
from reliability.detect.rules import placeholders

_BYTES = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def format_value(value: float, unit: str) -> str:
    """`value` as a person reads it: 91°C, 97%, 12.4 GB, 350 W."""
    if unit == "ratio":
        return f"{round(value * 100, 1):g}%"
    if unit == "celsius":
        return f"{value:.0f}°C"
    if unit == "bytes":
        for name, size in _BYTES:
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    if unit == "watts":
        return f"{value:.0f} W"
    if unit == "seconds":
        return f"{value:.3g}s"
    if unit == "hertz":
        return f"{value / 1e6:.0f} MHz"
    return f"{value:g}"


def format_time(at: float) -> str:
    """A Unix time in UTC, to the second: on-call teams span time zones."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Vars(dict[str, str]):
    # The config check rejects unknown names; a label a series happens to lack shows as "?".
    def __missing__(self, key: str) -> str:
        return "?"


def render(template: str, variables: Mapping[str, str]) -> str:
    return template.format_map(_Vars(variables))


def runbook_command(suggestion: RunbookSuggestion, variables: Mapping[str, str]) -> str | None:
    """`reliability runbook run NAME --param k=v ...`, or None when a parameter's label is
    missing: a command with a blank parameter would fail or, worse, target the wrong thing."""
    params = []
    for key, template in suggestion.params.items():
        if not all(variables.get(name) for name in placeholders(template)):
            return None
        params.append(f"--param {shlex.quote(key + '=' + render(template, variables))}")
    return " ".join(["reliability runbook run", shlex.quote(suggestion.name), *params])
