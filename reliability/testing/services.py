"""How tests treat a real service (PostgreSQL, sshd, nginx, promtool) that is missing.

Locally a missing service skips the test with the reason; in CI (`CI=true`) it fails,
so a broken install step can never turn a red run green by skipping.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_missing(reason: str) -> None:
    """Skip (locally) or fail (in CI) the calling test because a real service is missing."""
    if in_ci():
        pytest.fail(f"required service missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)
