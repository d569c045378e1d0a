"""Building blocks for dashboards/*.dashboard.py.

Every panel queries the datasource chosen in the `datasource` variable (a uid object, so the
same JSON works on any Grafana whatever its datasource is called), carries a unit, and gets
its id and position from `layout`, so the same source always renders the same JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import attr
from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    Dashboard,
    GridPos,
    Panel,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

from reliability.catalog import Metric

# Grafana 11's schema: an older number makes Grafana migrate (and rewrite) the JSON on load.
SCHEMA_VERSION = 39
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
PANEL_HEIGHT = 8

Steps = list[dict[str, Any]]


class Query(NamedTuple):
    """One PromQL expression and the legend of its series."""

    expr: str
    legend: str = ""


def steps(*above: tuple[float, str], base: str = "green") -> Steps:
    """Threshold steps: `base` below the first value, then each colour from its value up."""
    return [{"color": base, "value": None}] + [
        {"color": color, "value": value} for value, color in above
    ]


def _targets(queries: Sequence[Query]) -> list[Target]:
    return [
        Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, q in enumerate(queries)
    ]


def timeseries(
    title: str,
    *queries: Query,
    unit: str,
    description: str = "",
    thresholds: Steps | None = None,
    bounds: tuple[int | None, int | None] = (None, None),
    bars: bool = False,
    width: int = 12,
) -> TimeSeries:
    """A time series panel; thresholds, when given, are drawn as lines on the graph."""
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets(queries),
        unit=unit,
        thresholds=thresholds or steps(),
        thresholdsStyleMode="line" if thresholds else "off",
        valueMin=bounds[0],
        valueMax=bounds[1],
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if bars else 10,
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        gridPos=GridPos(h=PANEL_HEIGHT, w=width, x=0, y=0),
    )


def stat(
    title: str,
    query: Query,
    *,
    unit: str,
    description: str = "",
    thresholds: Steps | None = None,
    width: int = 6,
) -> Stat:
    """A stat panel showing the last value of each series, coloured by its thresholds."""
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets([query]),
        format=unit,
        thresholds=thresholds or steps(),
        reduceCalc="lastNotNull",
        graphMode="none",
        colorMode="background",
        textMode="value_and_name",
        noValue="0",
        gridPos=GridPos(h=PANEL_HEIGHT, w=width, x=0, y=0),
    )


def datasource_variable() -> Template:
    return Template(name="datasource", label="Data source", query="prometheus", type="datasource")


def textbox_variable(name: str, *, title: str, value: str) -> Template:
    """A free-text variable (a number a viewer may change, such as a price), `value` first."""
    return Template(name=name, label=title, query=value, default=value, type="textbox")


def label_variable(
    metric: Metric, label: str, *, title: str, within: dict[str, str] | None = None
) -> Template:
    """A multi-value variable over the values of `label` on `metric` ("All" by default);
    `within` narrows it by other variables (`{"pool": "$pool"}`: the nodes of the pools
    chosen).

    Raises ValueError when the metric has no such label: a filter on it would match nothing.
    """
    for name in (label, *(within or {})):
        if name not in metric.labels:
            raise ValueError(f"{metric.name} has no label {name!r} (labels: {metric.labels})")
    selector = ", ".join(f'{k}=~"{v}"' for k, v in (within or {}).items())
    series = f"{metric.name}{{{selector}}}" if selector else metric.name
    return Template(
        name=label,
        label=title,
        query=f"label_values({series}, {label})",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
    )


def layout(sections: Sequence[tuple[str, Sequence[Panel]]]) -> list[Panel]:
    """Rows of panels, flowed left to right and numbered in order: stable ids and positions."""
    placed: list[Panel] = []
    y = 0
    for title, panels in sections:
        placed.append(RowPanel(title=title, gridPos=GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        y += 1
        x, row_height = 0, 0
        for panel in panels:
            w, h = panel.gridPos.w, panel.gridPos.h
            if x + w > GRID_WIDTH:
                x, y, row_height = 0, y + row_height, 0
            placed.append(attr.evolve(panel, gridPos=GridPos(h=h, w=w, x=x, y=y)))
            x, row_height = x + w, max(row_height, h)
        y += row_height
    return [attr.evolve(panel, id=i) for i, panel in enumerate(placed, start=1)]


def new_dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    variables: Sequence[Template],
    sections: Sequence[tuple[str, Sequence[Panel]]],
    tags: Sequence[str] = (),
) -> Dashboard:
    """A dashboard with the datasource variable first, then `variables`, then the rows."""
    return Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=["reliability", *tags],
        templating=Templating(list=[datasource_variable(), *variables]),
        panels=layout(sections),
        schemaVersion=SCHEMA_VERSION,
        refresh="30s",
        time=Time("now-6h", "now"),
        timezone="browser",
        editable=False,
    )
