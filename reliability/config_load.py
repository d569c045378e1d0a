"""Loading the config file: YAML with line numbers, every error at once, each one as
`FILE:LINE: path.to.field: problem`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reliability.config import Config
from reliability.detect.builtin import BUILTIN
from reliability.detect.rules import check_rule

Loc = tuple[str | int, ...]
ENV_VAR = "RELIABILITY_CONFIG"
DEFAULT_FILE = Path("reliability.yaml")


class ConfigError(Exception):
    """The config cannot be used. `lines` holds one message per problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


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


def _place(loc: Loc, lines: dict[Loc, int], *, missing: bool = True) -> tuple[Loc, int | None]:
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


def field_error(cfg: Config, loc: Loc, problem: str) -> ConfigError:
    """A ConfigError about one field of a loaded config, placed at its line."""
    if cfg.source is None:
        return ConfigError([f"(defaults): {format_loc(loc)}: {problem}"])
    shown, line = _place(loc, cfg._lines)
    return ConfigError([_message(str(cfg.source), line, shown, problem)])


def _problem(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling against reliability.example.yaml"
    if kind == "missing":
        return "required field is missing"
    return msg.removeprefix("Value error, ")


def _cross_check(cfg: Config) -> Iterable[tuple[Loc, str]]:
    """What pydantic cannot see field by field: names unique, and names that must refer
    to each other."""
    for section in ("nodes", "services", "endpoints"):
        seen: set[str] = set()
        for i, item in enumerate(getattr(cfg, section)):
            if item.name in seen:
                yield (section, i, "name"), f"name {item.name!r} is used twice"
            seen.add(item.name)
    nodes = {n.name: n for n in cfg.nodes}
    pools = {n.pool for n in cfg.nodes if n.pool}
    services = {s.name for s in cfg.services}
    for i, s in enumerate(cfg.services):
        for j, pool in enumerate(s.pools):
            if pool not in pools:
                yield ("services", i, "pools", j), f"no node is in pool {pool!r}"
        lb = s.load_balancer
        if lb and lb.node not in nodes:
            yield ("services", i, "load_balancer", "node"), f"no node is named {lb.node!r}"
    for i, e in enumerate(cfg.endpoints):
        if e.service and e.service not in services:
            yield ("endpoints", i, "service"), f"no service is named {e.service!r}"
    yield from _check_rules(cfg)


def _check_rules(cfg: Config) -> Iterable[tuple[Loc, str]]:
    """Custom rules against the catalogue, the endpoints and each other; `disabled` and
    `inhibits` must name rules that exist (a typo would leave a rule silently on)."""
    names = {r.name for r in BUILTIN} | {r.name for r in cfg.rules.custom}
    endpoints = {e.name for e in cfg.endpoints}
    seen: set[str] = set()
    for i, rule in enumerate(cfg.rules.custom):
        if rule.name in seen:
            yield ("rules", "custom", i, "name"), f"name {rule.name!r} is used twice"
        seen.add(rule.name)
        for loc, problem in check_rule(rule, rule_names=names, endpoints=endpoints):
            yield ("rules", "custom", i, *loc), problem
    for j, name in enumerate(cfg.rules.disabled):
        if name not in names:
            yield ("rules", "disabled", j), f"no rule is named {name!r}"


def default_path() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_FILE


def read_yaml(file: Path) -> tuple[Any, dict[Loc, int]]:
    """The parsed document of a YAML file and the line of every key in it; a ConfigError
    naming the file (and the line, for bad YAML) when it cannot be read or parsed."""
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) if node is not None else None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return data, (_line_map(node) if node is not None else {})


def validation_messages(file: str, exc: ValidationError, lines: dict[Loc, int]) -> list[str]:
    """Every pydantic error as `FILE:LINE: path.to.field: problem`, in the order found."""
    msgs = []
    for err in exc.errors():
        loc, line = _place(tuple(err["loc"]), lines, missing=err["type"] == "missing")
        msgs.append(_message(file, line, loc, _problem(err)))
    return msgs


def placed_message(file: str, lines: dict[Loc, int], loc: Loc, problem: str) -> tuple[int, str]:
    """A problem found after validation, placed at its line: (line or 0, message), so
    callers can sort a batch of them into file order."""
    shown, line = _place(loc, lines)
    return line or 0, _message(file, line, shown, problem)


def load(path: Path | str | None = None) -> Config:
    """Load and validate a config file; raise ConfigError listing every problem.

    With no `path`, `$RELIABILITY_CONFIG` or `./reliability.yaml` is used, and when
    neither exists the built-in defaults (SQLite, no fleet) apply. A path given
    explicitly must exist.
    """
    explicit = path is not None or ENV_VAR in os.environ
    file = Path(path) if path is not None else default_path()
    if not file.exists():
        if explicit:
            raise ConfigError([f"{file}: no such config file; pass -c FILE or create it"])
        return Config()
    name = str(file)
    data, lines = read_yaml(file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{name}:1: the file must be a mapping of sections (database, nodes, ...)"]
        )
    try:
        cfg = Config.model_validate({**data, "source": file})
    except ValidationError as exc:
        raise ConfigError(validation_messages(name, exc, lines)) from None
    issues = [placed_message(name, lines, loc, problem) for loc, problem in _cross_check(cfg)]
    if issues:
        # In file order, as the user reads the file.
        raise ConfigError([message for _, message in sorted(issues, key=lambda i: i[0])])
    cfg._lines = lines
    return cfg
