"""Load dashboards/*.dashboard.py and render them to deterministic JSON.

Each file defines `dashboard` (a grafanalib Dashboard), or `make_dashboard(settings)` that
returns one from the config's `dashboards` section (the energy price, for one). Rendering
sorts keys and keeps the ids `layout` gave, so the same sources and settings give
byte-identical files that diff cleanly in review. Before anything is written, every metric a
target or variable queries must be in the catalogue: exported by the daemon, or one of the
serving engines' own metrics (`catalog.ENGINE_METRICS`).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard

from reliability import catalog
from reliability.config import DashboardsConfig

SUFFIX = ".dashboard.py"

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "atan2", "inf", "nan"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_NAME = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*(?![\w:]*\s*\()")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,")


class DashboardError(Exception):
    """A dashboard source could not be built; the message names the file or panel."""


@dataclass(frozen=True, slots=True)
class Built:
    """One rendered dashboard: where it came from, and its JSON model."""

    source: Path
    uid: str
    title: str
    model: dict[str, Any]

    @property
    def text(self) -> str:
        """The JSON as written to disk: sorted keys, two-space indent, final newline."""
        return json.dumps(self.model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _series(metrics: Iterable[catalog.Metric | catalog.EngineMetric]) -> frozenset[str]:
    names: set[str] = set()
    for metric in metrics:
        if metric.kind == "histogram":
            names.update(metric.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(metric.name)
    return frozenset(names)


def exported_series() -> frozenset[str]:
    """Every series name the daemon exports: counters end in `_total`, histograms add
    `_bucket`, `_sum` and `_count` to the family name."""
    return _series(catalog.ALL)


def engine_series() -> frozenset[str]:
    """Every series name of the serving engines' metrics (never exported by the daemon)."""
    return _series(catalog.ENGINE_METRICS)


def known_series() -> frozenset[str]:
    """What a dashboard may query: the daemon's series and the serving engines'."""
    return exported_series() | engine_series()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names, labels and keywords
    are not metric names)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", _VARIABLES.sub(" ", text))
    text = _GROUPING.sub(" ", text)
    return {n for n in _NAME.findall(text) if n.lower() not in _KEYWORDS}


def load(path: Path, settings: DashboardsConfig | None = None) -> Dashboard:
    """Import one dashboard file and return its `dashboard` (or what its `make_dashboard`
    makes of `settings`, the defaults if None); any failure names the file."""
    spec = importlib.util.spec_from_file_location(f"_dashboard_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise DashboardError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        make = getattr(module, "make_dashboard", None)
        dashboard = (
            make(settings or DashboardsConfig())
            if callable(make)
            else getattr(module, "dashboard", None)
        )
    except Exception as exc:  # the author's code: any error is theirs to see, with the file
        raise DashboardError(f"{path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(dashboard, Dashboard):
        raise DashboardError(
            f"{path}: defines no `dashboard` (a grafanalib Dashboard), nor a `make_dashboard` "
            "returning one"
        )
    if not dashboard.uid:
        raise DashboardError(f"{path}: the dashboard has no uid")
    return dashboard


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard's JSON model as plain data."""
    return json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))


def queries(model: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every target of every panel and every query variable."""
    for panel in model.get("panels", []):
        for target in panel.get("targets", []):
            yield f"panel {panel.get('title')!r}", target["expr"]
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            for name in _LABEL_VALUES.findall(variable["query"]):
                yield f"variable {variable['name']!r}", name


def unknown_metrics(built: Built) -> list[str]:
    """One line per query that selects a metric the catalogue does not have."""
    known = known_series()
    return [
        f"{built.source.name}: {built.title}: {where}: {sorted(missing)} not in the catalogue "
        f"in {expr!r}"
        for where, expr in queries(built.model)
        if (missing := metric_names(expr) - known)
    ]


def sources(directory: Path) -> list[Path]:
    """The dashboard files of a directory, in name order."""
    if not directory.is_dir():
        raise DashboardError(f"{directory}: no such directory")
    return sorted(directory.glob(f"*{SUFFIX}"))


def build_all(directory: Path, settings: DashboardsConfig | None = None) -> list[Built]:
    """Load, render and check every dashboard; raise DashboardError listing every problem."""
    built: list[Built] = []
    problems: list[str] = []
    for path in sources(directory):
        try:
            dashboard = load(path, settings)
        except DashboardError as exc:
            problems.append(str(exc))
            continue
        built.append(Built(path, dashboard.uid, dashboard.title, render(dashboard)))
    if not built and not problems:
        problems.append(f"{directory}: no *{SUFFIX} files")
    problems += [line for b in built for line in unknown_metrics(b)]
    seen: dict[str, Path] = {}
    for b in built:
        if b.uid in seen:
            problems.append(f"{b.source}: uid {b.uid!r} already used by {seen[b.uid]}")
        seen.setdefault(b.uid, b.source)
    if problems:
        raise DashboardError("\n".join(problems))
    return built


def write_all(built: list[Built], out: Path) -> list[Path]:
    """Write each dashboard to `out/<uid>.json` (the form Grafana's file provisioning reads)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for b in built:
        path = out / f"{b.uid}.json"
        path.write_text(b.text, encoding="utf-8")
        written.append(path)
    return written
