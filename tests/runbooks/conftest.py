"""Runbook fixtures: the example config, and a way to write runbook files."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from reliability.cli_support import load_config
from reliability.config import Config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "reliability.example.yaml"


@pytest.fixture
def example() -> Config:
    return load_config(EXAMPLE)


@pytest.fixture
def write_runbook(tmp_path: Path) -> Callable[[str, str], Path]:
    """write_runbook(name, yaml) -> the file, in tmp_path/runbooks."""
    directory = tmp_path / "runbooks"
    directory.mkdir()

    def write(name: str, text: str) -> Path:
        path = directory / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write
