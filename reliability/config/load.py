"""Loading the config file: YAML with line numbers, every error at once, each one as
`FILE:LINE: path.to.field: problem`.

What pydantic cannot check field by field is checked here for the sections config owns
(names unique, references resolved). A domain with checks of its own (detection's rules)
passes them in as `checks`; the entry points load through `cli_support.load_config`,
which names every domain's checks, so config never imports a domain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydantic import ValidationError

from reliability.config.container import image_problem
from reliability.config.errors import (
    ConfigError,
    Loc,
    placed_message,
    read_yaml,
    validation_messages,
)
from reliability.config.models import Config

ConfigCheck = Callable[[Config], Iterable[tuple[Loc, str]]]
"""A domain's check of a validated config: (where, problem) pairs, each placed at its line."""

ENV_VAR = "RELIABILITY_CONFIG"
DEFAULT_FILE = Path("reliability.yaml")


def _cross_check(cfg: Config) -> Iterable[tuple[Loc, str]]:
    """What pydantic cannot see field by field: names unique, and names that must refer
    to each other."""
    for section in ("nodes", "services", "endpoints"):
        seen: set[str] = set()
        for i, item in enumerate(getattr(cfg, section)):
            if item.name in seen:
                yield (section, i, "name"), f"name {item.name!r} is used twice"
            seen.add(item.name)
    rotations = cfg.oncall.rotations if cfg.oncall else []
    for i, r in enumerate(rotations):
        if any(other.name == r.name for other in rotations[:i]):
            yield ("oncall", "rotations", i, "name"), f"rotation {r.name!r} is named twice"
    escalation = cfg.slack.escalation if cfg.slack else {}
    for severity, policy in escalation.items():
        for j, step in enumerate(policy.steps):
            loc = ("slack", "escalation", severity, "steps", j)
            if step.mention == "oncall" and not rotations:
                yield (
                    (*loc, "mention"),
                    (
                        "`mention: oncall` needs a rotation: add `oncall.rotations` "
                        "(see `reliability oncall who`), or mention a user or group id"
                    ),
                )
            elif step.rotation and not any(r.name == step.rotation for r in rotations):
                known = ", ".join(r.name for r in rotations) or "none"
                yield (
                    (*loc, "rotation"),
                    (f"no oncall rotation is named {step.rotation!r} (known: {known})"),
                )
    nodes = {n.name: n for n in cfg.nodes}
    pools = {n.pool for n in cfg.nodes if n.pool}
    services = {s.name for s in cfg.services}
    listed: dict[str, str] = {}
    for i, s in enumerate(cfg.services):
        for j, pool in enumerate(s.pools):
            if pool not in pools:
                yield ("services", i, "pools", j), f"no node is in pool {pool!r}"
            if pool in listed and listed[pool] != s.name:
                members = ", ".join(n.name for n in cfg.nodes if n.pool == pool)
                yield (
                    ("services", i, "pools", j),
                    f"pool {pool!r} is also a pool of service {listed[pool]!r}: its nodes "
                    f"({members}) would be in two pools at once; "
                    "give each service pools of its own",
                )
            listed.setdefault(pool, s.name)
        if problem := image_problem(s.image, s.container, ("services", i, "image")):
            yield problem
        lb = s.load_balancer
        if lb and lb.node not in nodes:
            yield ("services", i, "load_balancer", "node"), f"no node is named {lb.node!r}"
        if lb and lb.route:
            yield from _route_check(cfg, i)
    for i, e in enumerate(cfg.endpoints):
        if e.service and e.service not in services:
            yield ("endpoints", i, "service"), f"no service is named {e.service!r}"
        elif e.role == "hosted" and not e.service and services:
            # Without it a busy hosted API's incident offers no failover, silently.
            yield (
                ("endpoints", i, "service"),
                "a hosted endpoint names the service whose traffic moves to the local pool "
                f"when it is busy; add `service:` ({', '.join(sorted(services))})",
            )
        if e.ca_file is not None and not cfg.path(e.ca_file).is_file():
            yield ("endpoints", i, "ca_file"), f"no such file: {cfg.path(e.ca_file)}"


def _route_check(cfg: Config, index: int) -> Iterable[tuple[Loc, str]]:
    """A service whose traffic can move to the hosted API needs that API as one endpoint
    with a completion probe: the switch back waits on its completions, not on `/health`."""
    service = cfg.services[index]
    hosted = cfg.hosted_endpoints(service.name)
    loc = ("services", index, "load_balancer", "route")
    if len(hosted) != 1:
        yield (
            loc,
            (
                f"{len(hosted)} hosted endpoints could be the one {service.name} falls back from; "
                f"give exactly one endpoint `role: hosted, service: {service.name}`"
            ),
        )
    elif hosted[0].kind != "openai" or not hosted[0].completion_interval:
        yield (
            loc,
            (
                f"hosted endpoint {hosted[0].name!r} sends no completion probe; the switch back "
                "needs one (kind: openai, a model, completion_interval above 0)"
            ),
        )


def default_path() -> Path:
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_FILE


def load(path: Path | str | None = None, *, checks: Sequence[ConfigCheck] = ()) -> Config:
    """Load and validate a config file; raise ConfigError listing every problem.

    With no `path`, `$RELIABILITY_CONFIG` or `./reliability.yaml` is used, and when
    neither exists the built-in defaults (SQLite, no fleet) apply. A path given
    explicitly must exist. `checks` run after config's own, their problems reported
    with the rest.
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
    issues = [
        placed_message(name, lines, loc, problem)
        for check in (_cross_check, *checks)
        for loc, problem in check(cfg)
    ]
    if issues:
        # In file order, as the user reads the file.
        raise ConfigError([message for _, message in sorted(issues, key=lambda i: i[0])])
    cfg._lines = lines
    return cfg
