"""Detection's checks of a loaded config, plugged into `config.load` by the entry points
(`cli_support.load_config`): custom rules against the catalogue, the endpoints and each
other; `disabled` must name rules that exist (a typo would leave a rule silently on)."""

from __future__ import annotations

from collections.abc import Iterable

from reliability.config import Config
from reliability.config.errors import Loc
from reliability.detect.builtin import BUILTIN
from reliability.detect.rules import check_rule


def check_rules(cfg: Config) -> Iterable[tuple[Loc, str]]:
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
