"""Run a `reliability` command on a wall clock moved by OFFSET seconds, as on a host whose
time sync failed: `python -m reliability.testing.skewed 3600 daemon -c reliability.yaml`.

A test hook standing in for libfaketime (not installed here): before `reliability` is
imported, `time.time`, `time.time_ns` and `datetime.now`/`utcnow`/`today` are moved by the
offset, so every wall-clock reading of the process is off; the monotonic clock is not, as
on a real host. The database server's clock stays right.
"""

from __future__ import annotations

import datetime as _datetime
import runpy
import sys
import time


def shift(offset: float) -> None:
    """Move this process's wall clock by `offset` seconds (before anything reads it)."""
    real_time, real_ns = time.time, time.time_ns
    real = _datetime.datetime

    def now_s() -> float:
        return real_time() + offset

    class Skewed(real):
        @classmethod
        def now(cls, tz: _datetime.tzinfo | None = None) -> Skewed:
            return cls.fromtimestamp(now_s(), tz)

        @classmethod
        def utcnow(cls) -> Skewed:
            return cls.fromtimestamp(now_s(), _datetime.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls) -> Skewed:
            return cls.fromtimestamp(now_s())

    time.time = now_s
    time.time_ns = lambda: real_ns() + int(offset * 1e9)
    _datetime.datetime = Skewed  # type: ignore[misc]


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m reliability.testing.skewed OFFSET_SECONDS COMMAND...")
    shift(float(sys.argv[1]))
    sys.argv = ["reliability", *sys.argv[2:]]
    runpy.run_module("reliability", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
