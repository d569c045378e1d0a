"""Polling with a deadline, for rig tests and benches: a busy machine is 2-5x slower than a
quiet one, so a test waits for the state it asserts instead of reading once after a sleep.

``wait_for`` returns the first truthy value of its check (so a test can assert on what it
found); ``seconds_until`` returns how long the condition took. Both raise TimeoutError naming
what was awaited once ``timeout`` seconds have passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.05) -> T:
    """The first truthy value of ``check()``, polled every ``every`` seconds; TimeoutError
    naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g}s: {what}")
        time.sleep(every)


def seconds_until(
    what: str, ok: Callable[[], object], timeout: float, every: float = 0.05
) -> float:
    """Seconds until ``ok()`` is truthy; TimeoutError naming ``what`` after ``timeout``."""
    started = time.monotonic()
    wait_for(what, ok, timeout, every)
    return time.monotonic() - started
