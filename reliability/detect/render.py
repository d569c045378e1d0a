"""What an on-call engineer reads: values with their units, the title and summary
templates filled in, and the runbook command to paste, parameters shell-quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from reliability.config.rules import RunbookSuggestion
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


@dataclass(frozen=True, slots=True)
class RunbookRequest:
    """A rule's runbook suggestion for one incident: parameters filled in from its labels."""

    name: str
    params: dict[str, str]
    auto: bool

    @property
    def command(self) -> str:
        """`reliability runbook run NAME --param k=v ...`, each word shell-quoted."""
        params = [f"--param {shlex.quote(k + '=' + v)}" for k, v in self.params.items()]
        return " ".join(["reliability runbook run", shlex.quote(self.name), *params])


def runbook_request(
    suggestion: RunbookSuggestion, variables: Mapping[str, str]
) -> RunbookRequest | None:
    """The suggestion filled in, or None when a parameter's label is missing: a run with a
    blank parameter would fail or, worse, target the wrong thing."""
    params = {}
    for key, template in suggestion.params.items():
        if not all(variables.get(name) for name in placeholders(template)):
            return None
        params[key] = render(template, variables)
    return RunbookRequest(suggestion.name, params, suggestion.auto)


def runbook_command(suggestion: RunbookSuggestion, variables: Mapping[str, str]) -> str | None:
    """The command an operator pastes, or None (see runbook_request)."""
    request = runbook_request(suggestion, variables)
    return request.command if request else None
