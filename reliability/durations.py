"""Durations as the config writes them (`90`, `15s`, `5m`, `1h30m`), parsed to seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
MAX_SECONDS = 366 * 86400.0  # no setting of this suite waits or soaks longer than a year
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds in `value`: a non-negative number, or a string such as `500ms`, `2m`, `1h30m`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 1h30m")
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration; write a number of seconds or e.g. 30s, 5m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{value!r} is over a year; write a shorter duration")
    return seconds


def parse_interval(value: Any) -> float:
    """Seconds between two runs of something: a duration above zero."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("an interval must be above zero; write e.g. 15s")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest config-style spelling of `seconds` (`90` -> `1m30s`)."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = [], round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Interval = Annotated[float, BeforeValidator(parse_interval)]
