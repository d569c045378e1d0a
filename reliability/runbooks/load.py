"""Loading `runbooks_dir`: every `*.yaml` in it, all problems of all files at once, each as
`FILE:LINE: path.to.field: problem` (the config loader's machinery and format).

A bad file does not take the others down: `load_runbooks` returns the runbooks that load
and, apart, the problems of those that do not (`Runbooks.broken`), so the daemon starts
with the good ones and says which file is wrong, and a run of the bad one says why it
cannot start. `config check` (`check_config`) and `load_dir` refuse any bad file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from reliability.config import Config
from reliability.config.errors import (
    ConfigError,
    Loc,
    placed_message,
    read_yaml,
    validation_messages,
)
from reliability.runbooks.actions import REGISTRY
from reliability.runbooks.errors import BrokenRunbook, NoSuchRunbook
from reliability.runbooks.spec import Runbook, problems


@dataclass(frozen=True)
class Runbooks(Mapping[str, Runbook]):
    """The runbooks of a directory that load, by name; `broken` holds, by name, the
    problems of each file that does not (FILE:LINE: field: problem lines)."""

    books: dict[str, Runbook]
    broken: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Runbook:
        return self.books[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.books)

    def __len__(self) -> int:
        return len(self.books)

    @property
    def problems(self) -> list[str]:
        """Every problem of every bad file, file by file."""
        return [line for lines in self.broken.values() for line in lines]


def load_runbooks(config: Config) -> Runbooks:
    """The runbooks of the config's `runbooks_dir` (relative to the config file), by name,
    the bad files apart; ConfigError only when the directory itself is missing."""
    return load_each(config.runbooks_path())


def named(books: Runbooks, name: str, config: Config) -> Runbook:
    """The runbook `name` of `books` (the config's); BrokenRunbook with its file's problems
    when that file is bad, NoSuchRunbook naming those known when there is no such file."""
    if name in books.broken:
        raise BrokenRunbook(name, books.broken[name])
    if name not in books:
        where = config.runbooks_path()
        known = ", ".join(books) or "none"
        raise NoSuchRunbook(f"no runbook is named {name!r} in {where}; known: {known}")
    return books[name]


def load_dir(directory: Path) -> Runbooks:
    """Every `*.yaml` in `directory`, by name; ConfigError listing every problem in every
    file when any is wrong, so one run of the command shows them all."""
    books = load_each(directory)
    if books.broken:
        raise ConfigError(books.problems)
    return books


def load_each(directory: Path) -> Runbooks:
    """Every `*.yaml` in `directory` (by name: the file's stem), each file on its own."""
    if not directory.is_dir():
        raise ConfigError(
            [f"{directory}: runbooks_dir is not a directory; create it or fix `runbooks_dir`"]
        )
    books: dict[str, Runbook] = {}
    broken: dict[str, list[str]] = {}
    for file in sorted(directory.glob("*.yaml")):
        try:
            books[file.stem] = load_file(file)
        except ConfigError as exc:
            broken[file.stem] = exc.lines
    return Runbooks(books, broken)


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


# --- the config's view of the runbooks (a check of `config.load`) ---------------------------
def check_config(config: Config) -> Iterable[tuple[Loc, str]]:
    """The runbooks the config names (a service's `auto_runbooks`, a custom rule's
    `runbook`) exist, and those it lets run on its own have no step that waits for a
    person. Bad runbook files are not this check's: `config check` lists them, the daemon
    logs them."""
    wanted: list[tuple[Loc, str]] = [
        (("services", i, "auto_runbooks", j), name)
        for i, service in enumerate(config.services)
        for j, name in enumerate(service.auto_runbooks)
    ]
    wanted += [
        (("rules", "custom", i, "runbook", "auto"), rule.runbook.name)
        for i, rule in enumerate(config.rules.custom)
        if rule.runbook is not None and rule.runbook.auto
    ]
    suggested = [
        (("rules", "custom", i, "runbook", "name"), rule.runbook.name)
        for i, rule in enumerate(config.rules.custom)
        if rule.runbook is not None and not rule.runbook.auto
    ]
    if not (wanted or suggested):
        return
    try:
        books = load_runbooks(config)
    except ConfigError:
        return  # no runbooks_dir: every command that reads it says so
    known = ", ".join(sorted([*books, *books.broken])) or "none"
    for loc, name in [*wanted, *suggested]:
        if name not in books and name not in books.broken:
            # Never run, and its incidents would offer a command that fails: say so now.
            yield loc, f"no runbook is named {name!r} in {config.runbooks_path()}; known: {known}"
    for loc, name in wanted:
        if name in books:  # a bad file is `config check`'s to list
            for why in _needs_person(books[name]):
                yield loc, f"runbook {name} cannot run on its own: {why}"


def _needs_person(book: Runbook) -> Iterator[str]:
    """Each step of `book` that a run no person watches cannot pass, placed in its file."""
    _, lines = read_yaml(book.source) if book.source else (None, {})
    for i, step in enumerate(book.steps):
        for loc, why in REGISTRY.of(step).needs_person(step, ("steps", i)):
            _, where = placed_message(str(book.source), lines, loc, why)
            yield (
                f"step {step.id!r} waits for a person ({where}); give it `approval: auto` "
                f"or take {book.name} out of the automatic runbooks"
            )
