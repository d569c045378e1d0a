"""Detection's checks of a loaded config, plugged into `config.load` by the entry points
(`cli_support.load_config`): custom rules against the catalogue, the endpoints and each
other; `disabled` must name rules that exist (a typo would leave a rule silently on);
each override names a rule and fields of its type, and the rule it makes is checked as a
custom rule is."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from reliability.config import Config
from reliability.config.errors import Loc
from reliability.detect.builtin import BUILTIN, FIXED_FIELDS, field_names, overridden
from reliability.detect.rules import AnyRule, check_rule

# What a threshold is called in each rule type: the field a user most often gets wrong.
_THRESHOLD_FIELD = {
    "threshold": "value",
    "error_ratio": "above",
    "counter_increase": "min_increase",
}


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
    loaded = {r.name: r for r in BUILTIN} if cfg.rules.builtin else {}
    loaded |= {r.name: r for r in cfg.rules.custom}
    for name, fields in cfg.rules.overrides.items():
        where: Loc = ("rules", "overrides", name)
        base = loaded.get(name)
        if base is None:
            off = " (rules.builtin is false)" if name in {r.name for r in BUILTIN} else ""
            known = ", ".join(sorted(loaded)) or "none"
            yield where, f"no rule is named {name!r}{off}; rules that can be overridden: {known}"
            continue
        for loc, problem in _check_override(base, fields, rule_names=names, endpoints=endpoints):
            yield (*where, *loc), problem


def _check_override(
    base: AnyRule, fields: Mapping[str, Any], *, rule_names: set[str], endpoints: set[str]
) -> Iterable[tuple[Loc, str]]:
    """Problems of one override: unknown or fixed fields, then the rule it makes,
    validated and checked whole."""
    known = field_names(base)
    bad = False
    for key in fields:
        if key in FIXED_FIELDS:
            bad = True
            yield (
                (key,),
                (f"an override cannot change `{key}`; write a custom rule (rules.custom) instead"),
            )
        elif key not in known:
            bad = True
            hint = _THRESHOLD_FIELD.get(base.type, "")
            hint = f" (its threshold is `{hint}`)" if hint and key != hint else ""
            usable = ", ".join(k for k in known if k not in FIXED_FIELDS)
            yield (
                (key,),
                (
                    f"{base.name} ({base.type} rule) has no field {key!r}{hint}; "
                    f"its fields: {usable}"
                ),
            )
    if bad:
        return
    try:
        rule = overridden(base, fields)
    except ValidationError as exc:
        for err in exc.errors():
            yield tuple(err["loc"]), str(err["msg"]).removeprefix("Value error, ")
        return
    yield from check_rule(rule, rule_names=rule_names, endpoints=endpoints)
