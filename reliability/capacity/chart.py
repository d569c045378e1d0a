"""The cost report as a PNG (matplotlib, Agg: no display needed): the cumulative cost month
by month at the asked load, and the whole period's cost against the load, break-even
marked. Imported only by `cost report`, which checks matplotlib is installed first."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reliability.capacity.cost import Report, report

POINTS = 60


def write(r: Report, path: Path) -> None:
    """Draw `r` into the PNG file `path` (replaced)."""
    i = r.inputs
    # The Agg canvas, no pyplot: nothing global, no display, nothing left open after.
    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    by_month, by_load = figure.subplots(1, 2)
    months = [r.months * k / POINTS for k in range(POINTS + 1)]
    for label, after in (("self-hosted", r.self_hosted_after), ("hosted API", r.hosted_after)):
        values = [after(m) for m in months]
        if None not in values:
            by_month.plot(months, values, label=label)
    if r.break_even_month is not None and r.break_even_month <= r.months:
        _break_even(by_month, r.break_even_month, f"month {r.break_even_month:.1f}")
    by_month.set_title(f"Cumulative cost at {i.qps:g} requests/s")
    by_month.set_xlabel("months")
    by_month.set_ylabel(i.currency)

    top = max(i.qps, r.break_even_qps or 0.0) * 2 or 1.0
    loads = [top * k / POINTS for k in range(1, POINTS + 1)]
    at_load = [report(replace(i, qps=q)) for q in loads]
    # Self-hosting rises a node at a time; the hosted bill with every request.
    for label, attr, style in (
        ("self-hosted", "self_hosted", "steps-post"),
        ("hosted API", "hosted", "default"),
    ):
        values = [getattr(x, attr) for x in at_load]
        if None not in values:
            by_load.plot(loads, values, label=label, drawstyle=style)
    if r.break_even_qps is not None:
        _break_even(by_load, r.break_even_qps, f"{r.break_even_qps:.1f} req/s")
    by_load.set_title(f"Cost over {i.years:g} years by load")
    by_load.set_xlabel("requests/s")
    by_load.set_ylabel(i.currency)
    for axes in (by_month, by_load):
        axes.grid(alpha=0.3)
        if axes.get_lines():
            axes.legend()
        else:
            axes.text(0.5, 0.5, "prices missing", ha="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _break_even(axes: Axes, x: float, where: str) -> None:
    """A dashed line where the two costs cross, labelled at its foot."""
    axes.axvline(x, linestyle="--", color="grey")
    axes.annotate(f"break-even: {where}", (x, 0), textcoords="offset points", xytext=(4, 8))
