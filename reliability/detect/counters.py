"""Increase of counters over a sliding window, per series, with bounded memory; and the
soaks of `upstream-recovered` (probes and failures over a window that restarts)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Bounds one series' history if evaluation runs far more often than the collectors; past
# it the window covers the newest points only (an increase can then be under-counted).
MAX_POINTS = 1024

SeriesKey = tuple[str, ...]


@dataclass(slots=True)
class _Series:
    raw: float  # the last value as collected
    total: float  # increase since the series started, resets folded in
    points: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))


class CounterWindow:
    """How much each series of one counter rose in the last `window` seconds.

    A value below the previous one is a counter reset (the collector restarted): the
    counter began again at zero, so its whole new value is increase, never a negative one.
    A series is kept after it stops being collected, so that when its source answers again
    its old count is not mistaken for new events; the number of series bounds the memory.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._series: dict[SeriesKey, _Series] = {}

    def observe(self, key: SeriesKey, at: float, value: float, *, from_zero: bool) -> float:
        """Record `value` at `at`; return the series' increase over the window ending at `at`.

        `from_zero`: the series is new and counts events since it appeared (a counter
        created at its first event); otherwise a new series' value is only the baseline.
        """
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(raw=0.0 if from_zero else value, total=0.0)
            series.points.append((at, 0.0))
        series.total += value - series.raw if value >= series.raw else value
        series.raw = value
        points = series.points
        points.append((at, series.total))
        start = at - self.window
        # Keep one point at or before the window's start: the baseline of the increase.
        while len(points) > 1 and points[1][0] <= start:
            points.popleft()
        return series.total - points[0][1]


@dataclass(slots=True)
class _Soak:
    since: float  # when this soak began: the first reading of the route as local
    points: deque[tuple[float, float, float]]  # (at, probes, failed) at each change


class SoakWindows:
    """Probes and failures of each series over a soak that restarts whenever `reset`:
    how `upstream-recovered` counts a hosted API's completion probes while its service's
    traffic is on the local pool. In memory: a restarted daemon starts the soak again."""

    def __init__(self) -> None:
        self._soaks: dict[SeriesKey, _Soak] = {}

    def reset(self, key: SeriesKey) -> None:
        self._soaks.pop(key, None)

    def observe(
        self, key: SeriesKey, at: float, probes: float, failed: float, soak: float
    ) -> tuple[bool, float, float]:
        """Record the cumulative counts at `at`; return (the soak has lasted `soak`, probes
        and failures in the last `soak` seconds). Counts going down (the collector
        restarted) start the soak again."""
        state = self._soaks.get(key)
        if state is None or probes < state.points[-1][1] or failed < state.points[-1][2]:
            state = self._soaks[key] = _Soak(at, deque([(at, probes, failed)], maxlen=MAX_POINTS))
        elif probes != state.points[-1][1]:
            state.points.append((at, probes, failed))
        points, start = state.points, at - soak
        # Keep one point at or before the window's start: the baseline of the counts.
        while len(points) > 1 and points[1][0] <= start:
            points.popleft()
        return at - state.since >= soak, probes - points[0][1], failed - points[0][2]
