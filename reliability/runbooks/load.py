"""Loading `runbooks_dir`: every `*.yaml` in it, all problems of all files at once, each as
`FILE:LINE: path.to.field: problem` (the config loader's machinery and format)."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from reliability.config import Config
from reliability.config.errors import ConfigError, placed_message, read_yaml, validation_messages
from reliability.runbooks.errors import NoSuchRunbook
from reliability.runbooks.spec import Runbook, problems


def load_runbooks(config: Config) -> dict[str, Runbook]:
    """The runbooks of the config's `runbooks_dir` (relative to the config file), by name."""
    return load_dir(config.runbooks_path())


def named(books: dict[str, Runbook], name: str, config: Config) -> Runbook:
    """The runbook `name` of `books` (the config's), or NoSuchRunbook naming those known."""
    if name not in books:
        where = config.runbooks_path()
        known = ", ".join(books) or "none"
        raise NoSuchRunbook(f"no runbook is named {name!r} in {where}; known: {known}")
    return books[name]


def load_dir(directory: Path) -> dict[str, Runbook]:
    """Every `*.yaml` in `directory`, by name (the file's stem); ConfigError listing every
    problem in every file when any is wrong, so one run of the command shows them all."""
    if not directory.is_dir():
        raise ConfigError(
            [f"{directory}: runbooks_dir is not a directory; create it or fix `runbooks_dir`"]
        )
    books: dict[str, Runbook] = {}
    errors: list[str] = []
    for file in sorted(directory.glob("*.yaml")):
        try:
            books[file.stem] = load_file(file)
        except ConfigError as exc:
            errors.extend(exc.lines)
    if errors:
        raise ConfigError(errors)
    return books


def load_file(file: Path) -> Runbook:
    """One runbook file; its name is the file's stem, so the file cannot disagree with it."""
    name = str(file)
    data, lines = read_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError([f"{name}:1: a runbook is a mapping (description, params, steps)"])
    if "name" in data:
        _, message = placed_message(
            name, lines, ("name",), "remove it; a runbook is named by its file"
        )
        raise ConfigError([message])
    try:
        runbook = Runbook.model_validate({**data, "name": file.stem, "source": file})
    except ValidationError as exc:
        raise ConfigError(validation_messages(name, exc, lines)) from None
    issues = sorted(placed_message(name, lines, loc, problem) for loc, problem in problems(runbook))
    if issues:
        raise ConfigError([message for _, message in issues])
    return runbook
