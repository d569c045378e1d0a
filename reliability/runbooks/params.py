"""`--param NAME=VALUE`: parsed, checked against the runbook's types and the config, and
turned into the values placeholders resolve to. Nothing runs until every one is right."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reliability.config import Config
from reliability.runbooks.errors import ParamError
from reliability.runbooks.scope import Pool
from reliability.runbooks.spec import (
    NodeParam,
    Param,
    PoolParam,
    Runbook,
    ServiceParam,
)


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`["node=gpu-1", ...]` as a mapping; the value is everything after the first `=`."""
    values: dict[str, str] = {}
    errors: list[str] = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            errors.append(f"--param {item!r}: write NAME=VALUE")
        elif key in values:
            errors.append(f"--param {key}: given twice")
        else:
            values[key] = value
    if errors:
        raise ParamError(errors)
    return values


def resolve(runbook: Runbook, given: Mapping[str, str], config: Config) -> dict[str, Any]:
    """Every parameter's value (given, else its default) checked and typed: node, service
    and pool parameters become the config's objects. ParamError lists every problem."""
    errors = [
        f"--param {key}: {runbook.name} has no such parameter; it takes: "
        f"{', '.join(runbook.params) or 'none'}"
        for key in given
        if key not in runbook.params
    ]
    values: dict[str, Any] = {}
    # Services first: a pool parameter is checked against the service it belongs to.
    for name, spec in sorted(runbook.params.items(), key=lambda i: i[1].type != "service"):
        raw = given.get(name, None if spec.required else str(getattr(spec, "default", "")))
        if raw is None:
            errors.append(f"--param {name}: required; pass --param {name}=<{spec.type}>")
            continue
        try:
            values[name] = _value(spec, raw, config, values)
        except ValueError as exc:
            source = "" if name in given else " (its default)"
            errors.append(f"--param {name}{source}: {exc}")
    if errors:
        raise ParamError(errors)
    return {name: values[name] for name in runbook.params}


def _value(spec: Param, raw: str, config: Config, earlier: Mapping[str, Any]) -> Any:
    if isinstance(spec, NodeParam):
        return _one_of(raw, {n.name: n for n in config.nodes}, "node")
    if isinstance(spec, ServiceParam):
        return _one_of(raw, {s.name: s for s in config.services}, "service")
    if isinstance(spec, PoolParam):
        service = earlier.get(spec.of) if spec.of else None
        if service is not None:
            return Pool(_one_of(raw, {p: p for p in service.pools}, f"pool of {service.name}"))
        pools = {n.pool: n.pool for n in config.nodes if n.pool}
        return Pool(_one_of(raw, pools, "pool"))
    return spec.parse(raw)


def _one_of(raw: str, known: Mapping[str, Any], what: str) -> Any:
    if raw not in known:
        raise ValueError(f"no {what} is named {raw!r}; known: {', '.join(known) or 'none'}")
    return known[raw]
