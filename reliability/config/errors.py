"""Config and runbook file errors placed at their line: `FILE:LINE: path.to.field: problem`.

The one place that reads a YAML file with the line of every key and turns pydantic's
errors into messages a user can act on; `config.load` and `runbooks.load` both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """The config cannot be used. `lines` holds one message per problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# libyaml's safe loader where PyYAML was built with it: the same documents and marks, and
# a config of a few hundred lines read in milliseconds rather than tens of them (every
# command reads it, `incidents list` and `status` included).
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _line_map(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Line (1-based) of every key and list item in a composed YAML document."""
    out = {} if out is None else out
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*loc, key.value)
            out[sub] = key.start_mark.line + 1
            _line_map(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*loc, i), out)
    return out


def place(loc: Loc, lines: dict[Loc, int], *, missing: bool = True) -> tuple[Loc, int | None]:
    """The path as the user wrote it and its line: pydantic inserts union tags
    (`threshold`) and validator names into `loc` that are not in the file; skip them.
    `missing`: the error may be about a field absent from the file."""
    found: Loc = ()
    for part in loc:
        if (*found, part) in lines:
            found = (*found, part)
    shown = found
    # A missing field is not in the file, but it is what the user must add: show it.
    if (
        missing
        and loc
        and loc[-1] not in found
        and isinstance(loc[-1], str)
        and lines.get(found) is not None
    ):
        shown = (*found, loc[-1])
    return shown, lines.get(found)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(file: str, line: int | None, loc: Loc, problem: str) -> str:
    where = f"{file}:{line}" if line else file
    return f"{where}: {format_loc(loc)}: {problem}"


def _problem(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling against reliability.example.yaml"
    if kind == "missing":
        return "required field is missing"
    return msg.removeprefix("Value error, ")


def read_yaml(file: Path) -> tuple[Any, dict[Loc, int]]:
    """The parsed document of a YAML file and the line of every key in it; a ConfigError
    naming the file (and the line, for bad YAML) when it cannot be read or parsed."""
    name = str(file)
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8")
        node = yaml.compose(text, Loader=LOADER)
        data = yaml.load(text, Loader=LOADER) if node is not None else None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{name}:{line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if node is None:
        return data, {}
    duplicates = [
        _message(name, line, loc, f"given twice (first at line {first}); keep one")
        for loc, first, line in _duplicate_keys(node)
    ]
    if duplicates:
        raise ConfigError(duplicates)
    return data, _line_map(node)


def _duplicate_keys(node: yaml.Node, loc: Loc = ()) -> list[tuple[Loc, int, int]]:
    """(path, first line, repeated line) of every key a mapping gives twice: YAML loaders
    keep the last silently, so a setting written twice would change without a word."""
    found: list[tuple[Loc, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in first:
                found.append(((*loc, key.value), first[key.value], line))
            else:
                first[key.value] = line
            found += _duplicate_keys(value, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, (*loc, i))
    return found


def validation_messages(file: str, exc: ValidationError, lines: dict[Loc, int]) -> list[str]:
    """Every pydantic error as `FILE:LINE: path.to.field: problem`, in the order found."""
    msgs = []
    for err in exc.errors():
        loc, line = place(tuple(err["loc"]), lines, missing=err["type"] == "missing")
        msgs.append(_message(file, line, loc, _problem(err)))
    return msgs


def placed_message(file: str, lines: dict[Loc, int], loc: Loc, problem: str) -> tuple[int, str]:
    """A problem found after validation, placed at its line: (line or 0, message), so
    callers can sort a batch of them into file order."""
    shown, line = place(loc, lines)
    return line or 0, _message(file, line, shown, problem)
